"""The HTML report of an evaluation: metrics tables and the plots, in one page.

The page links the PNG files by relative path, so the output folder can be moved or
served as a whole.
"""

import html
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
.note { color: #555; font-size: 0.9em; }
"""

METRIC_COLUMNS = ('mae', 'rmse', 'r2', 'pearson', 'baseline_mae', 'mean_abs_change',
                  'target_mean_abs_change', 'lag_s', 'pearson_fast')


def _number(value, digits: int = 3) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        if math.isnan(value):
            return 'n/a'
        if math.isinf(value):
            return 'inf'
        return f'{value:.{digits}f}'
    return html.escape(str(value))


def _table(header: Optional[Sequence[str]], rows: Sequence[Sequence]) -> str:
    lines = ['<table>']
    if header:
        lines.append('<tr>' + ''.join(f'<th>{html.escape(h)}</th>' for h in header) + '</tr>')
    for row in rows:
        lines.append('<tr>' + ''.join(f'<td>{_number(cell)}</td>' for cell in row) + '</tr>')
    lines.append('</table>')
    return '\n'.join(lines)


def _accuracy_table(metrics: Mapping, output_names: Sequence[str]) -> str:
    rows = []
    for name in output_names:
        values = metrics[name]
        baseline = values.get('baseline_mae')
        ratio = math.nan
        if baseline is not None and baseline > 0 and not math.isnan(baseline):
            ratio = values['mae'] / baseline
        rows.append([name] + [values.get(key) for key in METRIC_COLUMNS] + [ratio])
    return _table(['output', 'MAE', 'RMSE', 'R²', 'Pearson r', 'baseline MAE',
                   'change / frame', 'human change / frame', 'lag (s)', 'r fast',
                   'MAE / baseline'], rows)


def _robustness_table(metrics: Mapping, output_names: Sequence[str]) -> str:
    header = ['condition']
    for name in output_names:
        header += [f'{name} MAE', f'{name} r']
    header.append('saliency SSIM')
    rows = [['clean'] + [value for name in output_names
                         for value in (metrics[name]['mae'], metrics[name]['pearson'])]
            + [1.0]]
    for condition, values in metrics.get('robustness', {}).items():
        row = [condition]
        for name in output_names:
            row += [values[name]['mae'], values[name]['pearson']]
        row.append(values.get('saliency_ssim'))
        rows.append(row)
    return _table(header, rows)


def write_report(out_dir: Path, metrics: Mapping, output_names: Sequence[str],
                 figures: Sequence[Tuple[str, str]], info: Mapping[str, object],
                 notes: Optional[Sequence[str]] = None) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    ``metrics`` is the content of metrics.json, ``figures`` a list of (file name relative
    to ``out_dir``, caption), ``info`` the run's facts shown at the top (model, source,
    parameter counts, ...) and ``notes`` extra sentences shown under them.
    """
    out_dir = Path(out_dir)
    parts = ['<!DOCTYPE html>', '<html><head><meta charset="utf-8">',
             '<title>liquid_control evaluation</title>', f'<style>{STYLE}</style>',
             '</head><body>', '<h1>Policy evaluation</h1>']

    parts.append(_table(None, [[key, value] for key, value in info.items()]))
    run_rows = [
        ['frames replayed', metrics['frames']],
        ['frames scored', metrics['scored_frames']],
        ['frames not scored (no human command or invalid)', metrics['unscored_frames']],
        ['segments (state resets)', metrics['segments']],
        ['recorded duration (s)', float(metrics['duration_s'])],
        ['evaluation time (s), decoding and clean replay', float(metrics['eval_seconds'])],
        ['CPU time of the same (s)', metrics.get('eval_cpu_seconds')],
        ['speed (x real time)', f'{float(metrics["realtime_factor"]):.0f}'],
    ]
    parts.append(_table(['run', ''], run_rows))
    for note in notes or ():
        parts.append(f'<p class="note">{html.escape(note)}</p>')

    parts.append('<h2>Accuracy</h2>')
    parts.append('<p class="note">The baseline is a constant predictor at the training '
                 'mean of each output. MAE / baseline below 1 means the policy beats it. '
                 'Change / frame is the mean absolute change of a command between '
                 'consecutive frames, the policy\'s and the human\'s. Lag is how late '
                 'the policy follows the human: the shift of its commands that correlates '
                 'best with the human\'s. r fast is Pearson r of the changes faster than '
                 'about a second, what remains after subtracting a one-second moving '
                 'average from both.</p>')
    parts.append(_accuracy_table(metrics, output_names))
    if metrics.get('robustness'):
        parts.append('<h2>Robustness</h2>')
        parts.append('<p class="note">The same replay with every network input perturbed. '
                     'Saliency SSIM compares VisualBackProp maps of the perturbed frames '
                     'with those of the clean frames (1 = unchanged).</p>')
        parts.append(_robustness_table(metrics, output_names))

    parts.append('<h2>Plots</h2>')
    for file_name, caption in figures:
        parts.append(f'<figure><img src="{html.escape(file_name)}" '
                     f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                     '</figcaption></figure>')
    parts.append('</body></html>')
    path = out_dir / 'report.html'
    path.write_text('\n'.join(parts) + '\n', encoding='utf-8')
    return path
