"""Failure injection for the emulated pyACL: ``ACL_FAKE_FAIL`` specs (see ``acl``'s docstring)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FailSpec:
    call: str
    nth: int
    and_later: bool
    device: int | None
    code: int | None
    once: bool = False  # once per job: the first process to reach it claims it (a file in the report dir)


def parse_fail(text: str) -> list[FailSpec]:
    """``call[:nth[+]][@device][=code][!]``, comma-separated. ``rt.malloc:3`` fails the third
    ``acl.rt.malloc`` of the process; ``mdl.execute:2@1`` the second execute on device 1;
    ``mdl.execute:2+`` the second and every later one; ``=code`` overrides the return code;
    a trailing ``!`` fails only in the first process that gets there (needs ``ACL_FAKE_REPORT_DIR``),
    so a restarted worker does not fail again."""
    specs = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        once = part.endswith("!")
        part = part.rstrip("!")
        code = None
        if "=" in part:
            part, code_text = part.split("=", 1)
            code = int(code_text)
        device = None
        if "@" in part:
            part, dev_text = part.split("@", 1)
            device = int(dev_text)
        nth, and_later = 1, False
        if ":" in part:
            part, nth_text = part.split(":", 1)
            and_later = nth_text.endswith("+")
            nth = int(nth_text.rstrip("+"))
        name = part.strip()
        if name.startswith("acl."):
            name = name[4:]
        specs.append(FailSpec(name, nth, and_later, device, code, once))
    return specs
