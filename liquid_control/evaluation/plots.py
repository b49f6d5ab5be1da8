"""PNG plots of an evaluation: outputs over time, scatter, errors, neurons, saliency.

Every ``plot_*`` function draws one figure with matplotlib's Agg backend (no display
needed), writes it to ``path`` and returns the path. ``time_series_figure`` and
``robustness_figure`` return the figure itself, for a caller that inspects or saves it.
"""

import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)
import numpy as np  # noqa: E402

from liquid_control.evaluation.replay import EvaluationResult  # noqa: E402
from liquid_control.evaluation.saliency import overlay  # noqa: E402

HUMAN_COLOR = '#444444'
POLICY_COLOR = '#d62728'
BASELINE_COLOR = '#1f77b4'
SECONDS_PER_ROW = 60.0
DPI = 110


def _label(result: EvaluationResult, name: str) -> str:
    unit = result.output_units[result.output_names.index(name)]
    return f'{name} ({unit})' if unit else name


def _save(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches='tight')
    plt.close(figure)
    return path


def replay_time(result: EvaluationResult) -> np.ndarray:
    """Return each frame's time in seconds on a clock that skips the gaps between segments.

    Each segment follows the previous one after one median frame interval, so the time axis
    of a plot shows recorded driving, not the pauses between recordings.
    """
    times = np.empty(result.frames, dtype=np.float64)
    offset = 0.0
    for segment in np.unique(result.segment_index):
        rows = np.nonzero(result.segment_index == segment)[0]
        stamps = result.timestamps[rows]
        times[rows] = offset + (stamps - stamps[0])
        interval = float(np.median(np.diff(stamps))) if len(stamps) > 1 else 0.05
        offset = times[rows[-1]] + interval
    return times


def plot_time_series(result: EvaluationResult, name: str, path: Path,
                     seconds_per_row: float = SECONDS_PER_ROW) -> Path:
    """Plot the human's command and the policy's output over time, one row a minute.

    Dotted vertical lines mark state resets (a new episode or a gap in the recording).
    """
    return _save(time_series_figure(result, name, seconds_per_row), path)


def time_series_figure(result: EvaluationResult, name: str,
                       seconds_per_row: float = SECONDS_PER_ROW):
    """Return the figure of ``plot_time_series``.

    Without any human command for the output, the human's line and the constant baseline
    are left out. The legend sits above the top row, outside the data.
    """
    prediction, target = result.output(name)
    has_target = bool(np.isfinite(target).any())
    times = replay_time(result)
    total = float(times[-1]) if len(times) else 0.0
    seconds_per_row = min(seconds_per_row, max(total, 1.0))
    rows = max(1, int(math.ceil((total - 1e-6) / seconds_per_row)))
    figure, axes = plt.subplots(rows, 1, figsize=(12, 2.3 * rows + 0.6), squeeze=False,
                                sharey=True)
    values = np.concatenate([prediction, target])
    values = values[np.isfinite(values)]
    low = float(values.min()) if values.size else -1.0
    high = float(values.max()) if values.size else 1.0
    margin = 0.05 * max(high - low, 1e-6)

    # NaN at each segment start breaks the lines there instead of joining across a gap.
    starts = np.nonzero(np.diff(result.segment_index) != 0)[0] + 1
    plotted_times = np.insert(times, starts, np.nan)
    plotted_target = np.insert(target.astype(np.float64), starts, np.nan)
    plotted_prediction = np.insert(prediction.astype(np.float64), starts, np.nan)
    baseline = result.baseline.get(name) if has_target else None
    for row in range(rows):
        axis = axes[row, 0]
        if has_target:
            axis.plot(plotted_times, plotted_target, color=HUMAN_COLOR, linewidth=1.0,
                      label='human')
        axis.plot(plotted_times, plotted_prediction, color=POLICY_COLOR, linewidth=1.2,
                  label='policy')
        if baseline is not None:
            axis.axhline(baseline, color=BASELINE_COLOR, linewidth=0.8, linestyle='--',
                         label='constant baseline')
        for start in starts:
            axis.axvline(times[start], color='#999999', linewidth=0.8, linestyle=':')
        axis.set_xlim(row * seconds_per_row, (row + 1) * seconds_per_row)
        axis.set_ylim(low - margin, high + margin)
        axis.grid(alpha=0.3)
    axes[rows // 2, 0].set_ylabel(_label(result, name))
    axes[0, 0].legend(loc='lower right', bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=8,
                      frameon=False)
    axes[-1, 0].set_xlabel('recorded time (s), gaps removed')
    title = f'{name}: policy vs human' if has_target else f'{name}: policy'
    if result.perturbation:
        title += f' under {result.perturbation}'
    axes[0, 0].set_title(title, loc='left')
    return figure


def plot_scatter(result: EvaluationResult, name: str, path: Path) -> Path:
    """Plot policy output against the human's command on scored frames, with y = x."""
    prediction, target = result.output(name)
    scored = result.scored[:, result.output_names.index(name)]
    prediction = prediction[scored]
    target = target[scored]
    metrics = result.metrics[name]
    figure, axis = plt.subplots(figsize=(5.2, 5))
    # Human commands often take a few discrete values. A horizontal jitter of 1 % of the
    # target's range keeps overlapping points visible.
    span = float(np.ptp(target)) if target.size else 1.0
    jitter = np.random.default_rng(0).uniform(-0.01, 0.01, target.shape) * max(span, 1e-6)
    axis.scatter(target + jitter, prediction, s=5, alpha=0.25, color=POLICY_COLOR,
                 linewidths=0)
    if target.size:
        low = float(min(target.min(), prediction.min()))
        high = float(max(target.max(), prediction.max()))
        axis.plot([low, high], [low, high], color=HUMAN_COLOR, linewidth=1, label='y = x')
        axis.legend(loc='best', fontsize=8)
    axis.set_xlabel(f'human {_label(result, name)}')
    axis.set_ylabel(f'policy {_label(result, name)}')
    axis.set_title(f'{name}: r = {metrics["pearson"]:.3f}, MAE = {metrics["mae"]:.3f}')
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_error_histogram(result: EvaluationResult, name: str, path: Path) -> Path:
    """Plot histograms of policy error and of the constant baseline's error."""
    prediction, target = result.output(name)
    scored = result.scored[:, result.output_names.index(name)]
    error = (prediction - target)[scored]
    figure, axis = plt.subplots(figsize=(6.5, 4))
    baseline = result.baseline.get(name)
    bins = 60
    if baseline is not None and error.size:
        baseline_error = (baseline - target)[scored]
        limit = float(max(np.abs(error).max(), np.abs(baseline_error).max()))
        bins = np.linspace(-limit, limit, 61)
        axis.hist(baseline_error, bins=bins, histtype='step', color=BASELINE_COLOR,
                  linewidth=1.5, label=f'constant baseline (MAE '
                  f'{result.metrics[name]["baseline_mae"]:.3f})')
    axis.hist(error, bins=bins, color=POLICY_COLOR, alpha=0.6,
              label=f'policy (MAE {result.metrics[name]["mae"]:.3f})')
    axis.axvline(0.0, color=HUMAN_COLOR, linewidth=0.8)
    axis.set_xlabel(f'error = output - human, {_label(result, name)}')
    axis.set_ylabel('frames')
    axis.set_title(f'{name}: error distribution')
    axis.legend(loc='best', fontsize=8)
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_neuron_activity(times: np.ndarray, states: np.ndarray, path: Path,
                         groups: Optional[Sequence[tuple]] = None,
                         outputs: Optional[Mapping[str, np.ndarray]] = None,
                         neuron_ids: Optional[Sequence[int]] = None) -> Path:
    """Plot neuron states (T, N) over time as a heat map, one row a neuron.

    ``times`` (T,) are seconds on the clock of ``replay_time``, so the axis matches the
    time series plots.

    ``groups`` is an optional list of (name, first row, stop row) drawn as labelled bands,
    e.g. the NCP layers. ``outputs`` adds the named output traces in a panel below.
    ``neuron_ids`` labels the rows (default 0..N-1), for rows reordered by layer.
    """
    times = np.asarray(times, dtype=np.float64)
    states = np.asarray(states, dtype=np.float32)
    panels = 2 if outputs else 1
    heights = [3, 1] if outputs else [1]
    figure, axes = plt.subplots(panels, 1, figsize=(12, 0.12 * states.shape[1] + 3.5),
                                sharex=True, squeeze=False,
                                gridspec_kw={'height_ratios': heights})
    axis = axes[0, 0]
    # A symmetric colour scale at the 99th percentile keeps one outlier from washing out
    # the rest; potentials outside it saturate.
    limit = float(np.percentile(np.abs(states), 99)) or 1.0
    image = axis.imshow(states.T, aspect='auto', cmap='coolwarm', vmin=-limit, vmax=limit,
                        interpolation='nearest',
                        extent=(times[0], times[-1], states.shape[1] - 0.5, -0.5))
    figure.colorbar(image, ax=axis, pad=0.07 if groups else 0.01, label='neuron state')
    axis.set_ylabel('neuron')
    count = states.shape[1]
    if count <= 40:
        labels = list(range(count)) if neuron_ids is None else list(neuron_ids)
        axis.set_yticks(np.arange(count))
        axis.set_yticklabels([str(label) for label in labels], fontsize=7)
    if groups:
        for label, first, stop in groups:
            if first > 0:
                axis.axhline(first - 0.5, color='black', linewidth=0.8)
            # Layer names sit in the right margin, beside their band of rows.
            axis.text(1.005, 1.0 - (first + stop) / 2 / count, label, va='center',
                      ha='left', fontsize=8, transform=axis.transAxes)
    axis.set_title('neuron activity over time')
    if outputs:
        output_axis = axes[1, 0]
        for name, values in outputs.items():
            output_axis.plot(times, values, linewidth=1, label=name)
        # Outside on the right, over the hidden colour bar, so it covers no trace.
        output_axis.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
        output_axis.set_ylabel('output')
        output_axis.grid(alpha=0.3)
        # Keep the lower panel as wide as the heat map next to its colour bar.
        figure.colorbar(image, ax=output_axis, pad=0.07 if groups else 0.01
                        ).ax.set_visible(False)
    axes[-1, 0].set_xlabel('recorded time (s), gaps removed')
    return _save(figure, path)


def plot_saliency(frames: np.ndarray, maps: np.ndarray, path: Path,
                  titles: Optional[Sequence[str]] = None, columns: int = 2) -> Path:
    """Plot frames (N, 3, H, W) in [0, 1] beside their saliency overlays (N, H, W)."""
    count = len(frames)
    rows = int(math.ceil(count / columns))
    height, width = frames.shape[-2:]
    panel_width = 3.2
    panel_height = panel_width * height / width + 0.5
    figure, axes = plt.subplots(rows, 2 * columns,
                                figsize=(2 * columns * panel_width, rows * panel_height),
                                squeeze=False)
    for axis in axes.flat:
        axis.axis('off')
    for index in range(count):
        row, column = divmod(index, columns)
        frame_axis = axes[row, 2 * column]
        overlay_axis = axes[row, 2 * column + 1]
        frame_axis.imshow(frames[index].transpose(1, 2, 0))
        overlay_axis.imshow(overlay(frames[index], maps[index]))
        title = titles[index] if titles else f'frame {index}'
        frame_axis.set_title(title, fontsize=8)
        overlay_axis.set_title('VisualBackProp', fontsize=8)
    figure.suptitle('where the encoder looks: yellow most salient, red less, dark not',
                    fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def plot_robustness(summaries: Mapping[str, Mapping], output_names: Sequence[str],
                    path: Path, ssim: Optional[Dict[str, float]] = None) -> Optional[Path]:
    """Plot every output's Pearson r and MAE per condition, with saliency SSIM if given.

    Returns None, and writes nothing, when there is nothing to show.
    """
    figure = robustness_figure(summaries, output_names, ssim)
    return None if figure is None else _save(figure, path)


def robustness_figure(summaries: Mapping[str, Mapping], output_names: Sequence[str],
                      ssim: Optional[Dict[str, float]] = None):
    """Return a figure of Pearson r and MAE per condition, a row an output, or None.

    ``summaries`` maps a condition name ('clean', 'noise:0.1', ...) to a summary dict as
    written to metrics.json. Outputs without any finite MAE (no human command) get no row.
    The saliency SSIM panel, when ``ssim`` is given, sits beside the first row. Returns
    None when no output is scored and there is no SSIM.
    """
    names = list(summaries)
    scored = [output for output in output_names
              if any(_finite(summaries[name][output].get('mae')) for name in names)]
    columns = 0
    if scored:
        columns += 2
    if ssim:
        columns += 1
    if columns == 0:
        return None
    rows = max(1, len(scored))
    figure, axes = plt.subplots(rows, columns, figsize=(4.3 * columns, 3.4 * rows + 0.6),
                                squeeze=False)
    positions = np.arange(len(names))
    colors = [HUMAN_COLOR if name == 'clean' else POLICY_COLOR for name in names]
    used: List = []

    for row, output in enumerate(scored):
        pearson = [summaries[name][output]['pearson'] for name in names]
        mae = [summaries[name][output]['mae'] for name in names]
        r_axis, mae_axis = axes[row, 0], axes[row, 1]
        r_axis.bar(positions, _plottable(pearson), color=colors)
        r_axis.set_title(f'{output}: Pearson r')
        mae_axis.bar(positions, _plottable(mae), color=colors)
        baseline = summaries[names[0]][output].get('baseline_mae')
        if _finite(baseline):
            # Named in the title: a legend box would sit on the bars.
            mae_axis.axhline(baseline, color=BASELINE_COLOR, linestyle='--', linewidth=1)
            mae_axis.set_title(f'{output}: MAE (dashed: constant baseline)')
        else:
            mae_axis.set_title(f'{output}: MAE')
        used += [r_axis, mae_axis]
    if ssim:
        ssim_axis = axes[0, columns - 1]
        ssim_axis.bar(positions, _plottable([ssim.get(name, np.nan) for name in names]),
                      color=colors)
        ssim_axis.set_ylim(0, 1.05)
        ssim_axis.set_title('saliency SSIM vs clean (1 = unchanged)')
        used.append(ssim_axis)
    for axis in axes.flat:
        if axis not in used:
            axis.set_visible(False)
            continue
        axis.set_xticks(positions)
        axis.set_xticklabels(names, rotation=40, ha='right', fontsize=8)
        axis.grid(axis='y', alpha=0.3)
    figure.tight_layout()
    return figure


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _plottable(values: Sequence) -> np.ndarray:
    """Return values as floats, with None (a null in metrics.json) as NaN."""
    return np.array([math.nan if value is None else value for value in values], dtype=float)


def _layer_positions(wiring) -> Dict[int, tuple]:
    """Place each neuron in a column by layer, motor layer rightmost, evenly spread."""
    positions = {}
    column_count = len(wiring.layers) + 1
    for column, (_name, indices) in enumerate(wiring.layers, start=1):
        for row, neuron in enumerate(indices):
            positions[neuron] = (column / column_count, _spread(row, len(indices)))
    return positions


def _spread(row: int, count: int) -> float:
    return 0.5 if count == 1 else 0.05 + 0.9 * (1.0 - row / (count - 1))


def plot_wiring(wiring, path: Path, output_names: Sequence[str] = ()) -> Path:
    """Draw a wiring: inputs on the left, then one column a layer, motor neurons right.

    ``wiring`` is a ``liquid_control.model.wirings.Wiring``. Green lines are excitatory
    synapses and red ones inhibitory. Synapses within a layer (e.g. the recurrent command
    synapses) are drawn as arcs.
    """
    positions = _layer_positions(wiring)
    inputs = {index: (0.0, _spread(index, wiring.input_size))
              for index in range(wiring.input_size)}
    colors = {1: '#2ca02c', -1: '#d62728'}
    figure, axis = plt.subplots(figsize=(10, 7))

    for source, target, polarity in wiring.sensory_synapses():
        start, end = inputs[int(source)], positions[int(target)]
        axis.plot([start[0], end[0]], [start[1], end[1]], color=colors[int(polarity)],
                  alpha=0.15, linewidth=0.6)
    for source, target, polarity in wiring.synapses():
        start, end = positions[int(source)], positions[int(target)]
        if start[0] == end[0]:
            # Same column: bend the line outwards so it does not run through the neurons.
            style = 'arc3,rad=0.5' if source != target else 'arc3,rad=2.0'
            axis.annotate('', xy=end, xytext=start, arrowprops={
                'arrowstyle': '-', 'color': colors[int(polarity)], 'alpha': 0.5,
                'linewidth': 0.8, 'connectionstyle': style})
        else:
            axis.plot([start[0], end[0]], [start[1], end[1]], color=colors[int(polarity)],
                      alpha=0.45, linewidth=0.8)

    axis.scatter([p[0] for p in inputs.values()], [p[1] for p in inputs.values()], s=18,
                 color='#7f7f7f', zorder=3)
    axis.text(0.0, 1.03, f'{wiring.input_size} inputs', ha='center', fontsize=9)
    palette = ['#9467bd', '#ff7f0e', '#1f77b4', '#8c564b', '#17becf']
    for layer_number, (name, indices) in enumerate(wiring.layers):
        color = palette[layer_number % len(palette)]
        points = [positions[neuron] for neuron in indices]
        axis.scatter([p[0] for p in points], [p[1] for p in points], s=70, color=color,
                     edgecolors='black', linewidths=0.5, zorder=3)
        axis.text(points[0][0], 1.03, f'{len(indices)} {name}', ha='center', fontsize=9)
    for neuron, name in zip(wiring.motor_neurons, output_names):
        x, y = positions[neuron]
        axis.text(x + 0.02, y, name, va='center', fontsize=9)

    axis.plot([], [], color=colors[1], label='excitatory')
    axis.plot([], [], color=colors[-1], label='inhibitory')
    axis.legend(loc='lower right', fontsize=8)
    axis.set_xlim(-0.05, 1.0)
    axis.set_ylim(-0.02, 1.08)
    axis.axis('off')
    axis.set_title(f'{wiring.kind} wiring: {wiring.units} neurons, '
                   f'{wiring.sensory_synapse_count} sensory and {wiring.synapse_count} '
                   'internal synapses')
    return _save(figure, path)
