"""The HTML report of an evaluation: metrics tables and the plots, in one page.

The page links the PNG files by relative path, so the output folder can be moved or
served as a whole.
"""

import html
import math
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

from liquid_control.evaluation.perturbations import parse_perturbation
from liquid_control.evaluation.verdict import (FLAT_SPREAD_RATIO, NEAR_BASELINE_RATIO,
                                               REVERSED_PEARSON)

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
.warnings { background: #fff3cd; border: 1px solid #e0b000; padding: 0.3em 1em; }
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


def _baseline_ratio(values: Mapping) -> float:
    """Return MAE / baseline MAE of one output's metrics, or NaN without a baseline."""
    baseline = values.get('baseline_mae')
    error = values.get('mae')
    if baseline is None or error is None or math.isnan(baseline) or not baseline > 0:
        return math.nan
    return error / baseline


def _accuracy_table(metrics: Mapping, output_names: Sequence[str]) -> str:
    rows = []
    for name in output_names:
        values = metrics[name]
        rows.append([name, values.get('unit') or '-']
                    + [values.get(key) for key in METRIC_COLUMNS] + [_baseline_ratio(values)])
    return _table(['output', 'unit', 'MAE', 'RMSE', 'R²', 'Pearson r', 'baseline MAE',
                   'change / frame', 'human change / frame', 'lag (s)', 'r fast',
                   'MAE / baseline'], rows)


def _parts_section(metrics: Mapping, output_names: Sequence[str]) -> List[str]:
    """Return the per-part metrics of a run on the model's training data, if it has them."""
    parts = metrics.get('parts')
    if not parts:
        return []
    counts = metrics.get('part_frames') or {}
    total = metrics['frames']
    share = ', '.join(f'{counts.get(part, 0)} in the {part} part' for part in parts)
    lines = ['<h2>Parts of the training data</h2>',
             f'<p class="note">These episodes are the data the model was trained on. Of the '
             f'{total} frames, {share}. Only the held-out parts (validation, test) show how '
             'the model drives on frames it did not learn from. Each part is replayed on its '
             'own, every run of its frames from a fresh state, as training scores them, so '
             'the test row matches --part test and the test_metrics that train stored in '
             'the checkpoint.</p>']
    header = ['part', 'frames']
    for name in output_names:
        header += [f'{name} MAE', f'{name} r', f'{name} MAE / baseline']
    rows = []
    for part, values in parts.items():
        row = [part, values['frames']]
        for name in output_names:
            row += [values[name]['mae'], values[name]['pearson'],
                    _baseline_ratio(values[name])]
        rows.append(row)
    lines.append(_table(header, rows))
    return lines


def _range_lines(metrics: Mapping, output_names: Sequence[str]) -> List[str]:
    """Return the policy's range against the human's and the error by command size."""
    lines = ['<h2>Where the error is</h2>',
             '<p class="note">The scored frames grouped by how large the human\'s command '
             'is, as a share of the largest one (for steering, full lock): near zero below '
             '10 %, moderate 10-50 %, large from 50 %. A policy that follows small '
             'corrections but not hard turns has a low MAE near zero and a high one on '
             'large commands, with a mean |policy| below the mean |human|.</p>']
    rows = []
    for name in output_names:
        values = metrics[name]
        unit = values.get('unit') or ''
        lines.append(
            f'<p>{html.escape(name)}: the policy ranges over '
            f'{_number(values.get("prediction_min"))} to {_number(values.get("prediction_max"))}'
            f', the human over {_number(values.get("target_min"))} to '
            f'{_number(values.get("target_max"))} {html.escape(unit)}; '
            f'{_number(values.get("frames_beyond_prediction_range"))} scored frames have a '
            'human command beyond the policy\'s range.</p>')
        for group in values.get('error_by_magnitude') or []:
            rows.append([name, group['bin'],
                         f'{_number(group["low"])}-{_number(group["high"])} {unit}'.strip(),
                         group['frames'], group['mae'], group['mean_abs_target'],
                         group['mean_abs_prediction']])
    if rows:
        lines.append(_table(['output', 'human command', '|human| range', 'frames', 'MAE',
                             'mean |human|', 'mean |policy|'], rows))
    return lines


def _scored_outputs(metrics: Mapping, output_names: Sequence[str]) -> List[str]:
    return [name for name in output_names if metrics[name].get('scored_frames')]


def _robustness_table(metrics: Mapping, output_names: Sequence[str]) -> str:
    scored = _scored_outputs(metrics, output_names)
    header = ['condition', 'perturbation']
    for name in scored:
        header += [f'{name} MAE', f'{name} r']
    header.append('saliency SSIM')
    rows = [['clean', 'none'] + [value for name in scored
                                 for value in (metrics[name]['mae'], metrics[name]['pearson'])]
            + [1.0]]
    for condition, values in metrics.get('robustness', {}).items():
        row = [condition, parse_perturbation(condition).describe()]
        for name in scored:
            row += [values[name]['mae'], values[name]['pearson']]
        row.append(values.get('saliency_ssim'))
        rows.append(row)
    return _table(header, rows)


def _warning_lines(metrics: Mapping) -> List[str]:
    """Return the warnings box, or the checks passed, for the top of the page."""
    warnings = metrics.get('warnings') or []
    if warnings:
        items = ''.join(f'<li>{html.escape(warning["message"])}</li>' for warning in warnings)
        return [f'<div class="warnings"><h2>Warnings</h2><ul>{items}</ul></div>']
    if not metrics.get('scored_frames'):
        return []
    return [f'<p>No warnings: every output\'s MAE is below {NEAR_BASELINE_RATIO} of the '
            f'constant predictor\'s, its Pearson r above {REVERSED_PEARSON}, its spread at '
            f'least {FLAT_SPREAD_RATIO} of the human\'s, and its unit that of the '
            'recording.</p>']


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
    parts += _warning_lines(metrics)

    parts.append(_table(None, [[key, value] for key, value in info.items()]))
    part_frames = metrics.get('part_frames') or {}
    run_rows = [
        ['part of the training data scored', metrics.get('part', 'all')],
        ['frames replayed', metrics['frames']],
        ['frames scored', metrics['scored_frames']],
        ['frames not scored (no human command or invalid)', metrics['unscored_frames']],
        ['segments (state resets)', metrics['segments']],
        ['recorded duration (s)', float(metrics['duration_s'])],
        ['evaluation time (s), decoding and clean replay', float(metrics['eval_seconds'])],
        ['CPU time of the same (s)', metrics.get('eval_cpu_seconds')],
        ['speed (x real time)', f'{float(metrics["realtime_factor"]):.0f}'],
    ]
    if part_frames:
        run_rows.insert(2, ['of them training frames of this model', part_frames['train']])
    parts.append(_table(['run', ''], run_rows))
    for note in notes or ():
        parts.append(f'<p class="note">{html.escape(note)}</p>')

    parts += _parts_section(metrics, output_names)
    parts.append('<h2>Accuracy</h2>')
    if metrics.get('scored_frames'):
        parts.append(
            '<p class="note">The baseline is a constant predictor: the training mean of each '
            'output, sent on every frame. MAE / baseline is the policy\'s MAE as a share of '
            'the baseline\'s. At 1 the policy is no more accurate than that fixed command, '
            f'and from {NEAR_BASELINE_RATIO} this report warns; a policy that steers '
            'usefully is clearly lower (the steering models of the donkeycar tub benchmark '
            'in docs/training.md reach 0.67-0.69 on held-out frames). '
            'Change / frame is the mean absolute change of a command between '
            'consecutive frames, the policy\'s and the human\'s. Lag is how late '
            'the policy follows the human: the shift of its commands that correlates '
            'best with the human\'s. r fast is Pearson r of the changes faster than '
            'about a second, what remains after subtracting a one-second moving '
            'average from both.</p>')
        parts.append(_accuracy_table(metrics, output_names))
        parts += _range_lines(metrics, output_names)
    else:
        parts.append('<p>No frame has a human command, so nothing is scored.</p>')
    if metrics.get('robustness'):
        parts.append('<h2>Robustness</h2>')
        parts.append('<p class="note">The same replay with every network input perturbed, '
                     'after crop and resize, on images with values in [0, 1]: noise:V adds '
                     'Gaussian noise of variance V, so its standard deviation is the square '
                     'root of V (noise:0.1 is 0.32, a third of the full range). Saliency SSIM '
                     'compares VisualBackProp maps of the perturbed frames with those of the '
                     'clean frames: 1 = the maps are unchanged, and the lower it is, the more '
                     'the perturbation moves where the encoder looks.</p>')
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
