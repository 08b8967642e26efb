# ruff: noqa: E501  (the page template's lines are HTML, kept whole for reading)
"""The page: one self-contained HTML file (inline style, inline SVG charts, thumbnails as data URIs;
no script and no URL, so it opens from a file with no network). Rendered with Jinja2, the ``report``
extra, autoescaping every value."""

from __future__ import annotations

from typing import Any

from ..errors import MissingExtraError
from . import svg
from .build import TOP_CLASSES, Report

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#f4f5f7}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:0 0 10px;border-bottom:1px solid #dde;padding-bottom:4px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:14px 18px;margin:14px 0}
.sub{color:#666;margin:0 0 8px}.muted{color:#777}.warn{color:#a33;font-weight:600}.good{color:#2a7a3a}
.kpis{display:flex;flex-wrap:wrap;gap:10px;margin:4px 0 12px}
.kpi{border:1px solid #e3e6ea;border-radius:5px;padding:6px 12px;min-width:110px}
.kpi b{display:block;font-size:20px}.kpi span{color:#666;font-size:12px}
table{border-collapse:collapse;margin:6px 0 10px}td,th{border-bottom:1px solid #eceef1;padding:3px 10px 3px 0;
text-align:left;vertical-align:top}td:first-child{white-space:nowrap}th{font-weight:600;color:#444}td.n,th.n{text-align:right}
code{font:12px ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:10px}
.card{border:1px solid #e3e6ea;border-radius:5px;padding:6px;font-size:12px}
.card img,.thumb{max-width:96px;max-height:96px;display:block;margin-bottom:4px}
.nothumb{width:96px;height:60px;background:#eee;color:#888;font-size:11px;display:flex;align-items:center;
justify-content:center;margin-bottom:4px}
.row{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.legend i{display:inline-block;width:12px;height:12px;margin:0 4px -2px 10px}
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>ascend-batch report: {{ d.name }}</title><style>{{ style }}</style></head>
<body><main>
<h1>Night report: {{ d.name }}</h1>
<p class="sub"><code>{{ d.out }}</code> · generated {{ d.generated }} ·
{% if d.complete %}<span class="good">complete</span>{% else %}<span class="warn">incomplete:
{{ d.units.done }} of {{ d.units.total }} units</span>{% endif %}</p>

<section id="glance"><h2>The night at a glance</h2>
<div class="kpis">
<div class="kpi"><b data-figure="images">{{ d.images.processed }}</b><span>images (of {{ d.images.listed }} listed)</span></div>
<div class="kpi"><b data-figure="ok">{{ d.images.ok }}</b><span>ok</span></div>
<div class="kpi"><b data-figure="errors">{{ d.images.error }}</b><span>errors ({{ pct(d.error_rate) }})</span></div>
<div class="kpi"><b data-figure="wall">{{ secs(g.wall_seconds) }}</b><span>wall time, all runs</span></div>
<div class="kpi"><b data-figure="rate">{{ g.images_per_second if g.images_per_second is not none else "–" }}</b><span>images/s</span></div>
<div class="kpi"><b data-figure="classes">{{ d.classes.distinct }}</b><span>classes (top-1)</span></div>
</div>
<div class="row"><table><tr><th>errors by kind</th><th class="n">images</th></tr>
{% for e in d.errors_by_kind %}<tr><td><code>{{ e.kind }}</code></td><td class="n" data-error-kind="{{ e.kind }}">{{ e.count }}</td></tr>
{% else %}<tr><td colspan="2" class="muted">no errors</td></tr>{% endfor %}</table>
<table><tr><th>device</th><th class="n">images</th></tr>
{% for dev, n in g.devices.items() %}<tr><td><code>{{ dev }}</code></td><td class="n">{{ n }}</td></tr>
{% else %}<tr><td colspan="2" class="muted">no _summary.json yet</td></tr>{% endfor %}</table>
{% if g.stage_seconds %}<table><tr><th>stage</th><th class="n">seconds (summed over threads)</th></tr>
{% for k, v in g.stage_seconds.items() %}<tr><td>{{ k }}</td><td class="n">{{ "%.3f"|format(v) }}</td></tr>{% endfor %}
</table>{% endif %}</div>
<table id="runs"><tr><th>run</th><th>shard</th><th class="n">images</th><th class="n">wall s</th><th class="n">img/s</th>
<th>backend</th><th>devices</th><th class="n">batch</th><th class="n">worker deaths</th></tr>
{% for r in g.runs %}<tr><td><code>{{ r.run_id }}</code></td><td>{{ r.shard if r.shard is not none else "" }}</td>
<td class="n">{{ r.images }}</td><td class="n">{{ r.wall_seconds }}</td><td class="n">{{ r.images_per_second }}</td>
<td>{{ r.backend }}</td><td>{{ (r.devices or [])|join(", ") }}</td><td class="n">{{ r.batch_size }}</td>
<td class="n">{{ r.worker_deaths }}</td></tr>
{% else %}<tr><td colspan="9" class="muted">no run recorded in _summary.json</td></tr>{% endfor %}</table>
</section>

<section id="classes"><h2>Class mix</h2>
<p class="sub">Top-1 class of the {{ d.images.ok }} ok images; the {{ shown_classes }} most frequent of
{{ d.classes.distinct }}.</p>
{{ class_svg }}
</section>

<section id="confidence"><h2>Confidence</h2>
<p class="sub">Top-1 probability of the ok images, in bins of {{ "%.2f"|format(1 / bins) }};
mean <b data-figure="mean-confidence">{{ "%.4f"|format(d.confidence.mean) if d.confidence.mean is not none else "–" }}</b>.</p>
{{ hist_svg }}
</section>

<section id="uncertain"><h2>Least confident images</h2>
<p class="sub">Smallest margin between the top-1 and the top-2 probability.</p>
<div class="grid">
{% for u in d.least_confident %}<div class="card">
{% if u.image_id in thumbs %}<img src="{{ thumbs[u.image_id] }}" alt="{{ u.image_id }}">{% else %}
<div class="nothumb">no thumbnail</div>{% endif %}
<code>{{ u.image_id }}</code><br>margin {{ "%.3f"|format(u.margin) }}
<table>{% for t in u.top3 %}<tr><td>{{ t["class"] }}</td><td class="n">{{ "%.3f"|format(t.prob) }}</td></tr>{% endfor %}</table>
</div>{% else %}<p class="muted">no classified image</p>{% endfor %}
</div></section>

<section id="errors"><h2>Errors</h2>
<table><tr><th>kind</th><th class="n">images</th><th>examples</th></tr>
{% for e in d.errors_by_kind %}<tr><td><code>{{ e.kind }}</code></td><td class="n">{{ e.count }}</td><td>
{% for x in e.examples %}<div>{% if x.image_id in thumbs %}<img class="thumb" src="{{ thumbs[x.image_id] }}" alt="{{ x.image_id }}">{% endif %}
<code>{{ x.image_id }}</code>: <span class="muted">{{ x.message }}</span></div>{% endfor %}</td></tr>
{% else %}<tr><td colspan="3" class="muted">no errors</td></tr>{% endfor %}</table>
</section>

<section id="evaluation"><h2>Accuracy</h2>
{% if ev %}<div class="kpis">
<div class="kpi"><b data-figure="top1">{{ "%.4f"|format(ev.top1) }}</b><span>top-1</span></div>
<div class="kpi"><b data-figure="top5">{{ "%.4f"|format(ev.top5) }}</b><span>top-5</span></div>
<div class="kpi"><b>{{ ev.matched }}</b><span>labelled images with results</span></div></div>
{% if ev.per_class %}<table><tr><th>class</th><th class="n">images</th><th class="n">top-1</th></tr>
{% for c in ev.per_class[:30] %}<tr><td>{{ c["class"] }}</td><td class="n">{{ c.images }}</td>
<td class="n">{{ "%.3f"|format(c.top1) }}</td></tr>{% endfor %}</table>{% endif %}
{% if ev.confusions %}<table><tr><th>true class</th><th>predicted</th><th class="n">images</th></tr>
{% for c in ev.confusions %}<tr><td>{{ c["true"] }}</td><td>{{ c.predicted }}</td><td class="n">{{ c.images }}</td></tr>
{% endfor %}</table>{% endif %}
{% else %}<p class="muted">No <code>_evaluation.json</code>: run <code>ascend-batch evaluate OUT --labels CSV</code>.</p>{% endif %}
</section>

<section id="drift"><h2>Drift against earlier nights</h2>
{% if drifts %}<p class="sub">Class mix: Jensen-Shannon divergence (base 2: 0 the same mix, 1 nothing in common) and
PSI (under 0.1 stable, over 0.25 a large shift).</p>
{% for x in drifts %}<h3>vs <code>{{ x.d.baseline }}</code></h3>
<table><tr><th></th><th class="n">baseline</th><th class="n">tonight</th><th class="n">change</th></tr>
<tr><td>images</td><td class="n">{{ x.d.images.baseline }}</td><td class="n">{{ x.d.images.tonight }}</td><td></td></tr>
<tr><td>error rate</td><td class="n">{{ pct(x.d.error_rate.baseline) }}</td><td class="n">{{ pct(x.d.error_rate.tonight) }}</td>
<td class="n">{{ "%+.2f"|format(100 * x.d.error_rate.change) }} pp</td></tr>
<tr><td>mean confidence</td><td class="n">{{ num(x.d.confidence.mean_baseline) }}</td>
<td class="n">{{ num(x.d.confidence.mean_tonight) }}</td><td></td></tr>
<tr><td>class mix JS divergence</td><td></td><td class="n" data-figure="js">{{ "%.4f"|format(x.d.class_mix.js_divergence) }}</td><td></td></tr>
<tr><td>class mix PSI</td><td></td><td class="n" data-figure="psi">{{ "%.4f"|format(x.d.class_mix.psi) }}</td><td></td></tr>
<tr><td>confidence histogram JS divergence</td><td></td>
<td class="n">{{ "%.4f"|format(x.d.confidence.histogram_js_divergence) }}</td><td></td></tr>
<tr><td>new classes</td><td colspan="3">{{ names(x.d.class_mix.new_classes) }}</td></tr>
<tr><td>vanished classes</td><td colspan="3">{{ names(x.d.class_mix.vanished_classes) }}</td></tr></table>
<table><tr><th>class</th><th class="n">baseline share</th><th class="n">tonight share</th><th class="n">change</th></tr>
{% for c in x.d.class_mix.share_changes %}<tr><td>{{ c["class"] }}</td><td class="n">{{ pct(c.baseline) }}</td>
<td class="n">{{ pct(c.tonight) }}</td><td class="n">{{ "%+.2f"|format(100 * c.change) }} pp</td></tr>{% endfor %}</table>
<p class="legend">confidence:<i style="background:{{ baseline_colour }}"></i>baseline<i style="background:{{ tonight_colour }}"></i>tonight</p>
{{ x.svg }}
{% endfor %}
{% else %}<p class="muted">No baseline: pass <code>--baseline PREVIOUS_OUT</code> (repeatable).</p>{% endif %}
</section>
</main></body></html>
"""


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _names(labels: list[str], shown: int = 30) -> str:
    if not labels:
        return "none"
    more = f" … and {len(labels) - shown} more (all in the JSON)" if len(labels) > shown else ""
    return f"{len(labels)}: " + ", ".join(labels[:shown]) + more


def _secs(x: float | None) -> str:
    return "–" if not x else f"{x:.1f} s"


def render(report: Report, data: dict[str, Any]) -> str:
    try:
        import jinja2
        from markupsafe import Markup
    except ImportError:
        raise MissingExtraError(
            "the HTML page needs Jinja2: pip install 'ascend-batch[report]' (the JSON summary is written)"
        ) from None
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True)
    template = env.from_string(TEMPLATE)
    rows = [(c["class"], c["images"], c["share"]) for c in data["classes"]["top"][:TOP_CLASSES]]
    drifts = [
        {
            "d": d,
            "svg": Markup(svg.histogram(d["confidence"]["histogram_tonight"], d["confidence"]["histogram_baseline"])),
        }
        for d in data["drift"]
    ]
    return template.render(
        d=data,
        g=data["glance"],
        ev=data["evaluation"],
        style=Markup(STYLE),
        thumbs=report.thumbs,
        bins=len(data["confidence"]["histogram"]),
        shown_classes=len(rows),
        class_svg=Markup(svg.class_bars(rows)),
        hist_svg=Markup(svg.histogram(data["confidence"]["histogram"])),
        drifts=drifts,
        baseline_colour=svg.BASELINE,
        tonight_colour=svg.TONIGHT,
        pct=_pct,
        num=_num,
        secs=_secs,
        names=_names,
    )
