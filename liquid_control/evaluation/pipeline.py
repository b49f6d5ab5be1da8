"""A full evaluation run: clean replay, robustness, saliency, neuron traces, files.

``run_evaluation`` is what ``liquid-control evaluate`` does, as a library call, so other
tools (``liquid-control compare``) produce the same numbers. It writes, into ``out_dir``:
``metrics.json``, ``predictions.csv``, the PNG plots and ``report.html``. When the episodes
are the data the model was trained on, it scores each part of that data (train,
validation, test) too, or only one part.
"""

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from liquid_control.data.preprocess import Preprocessing
from liquid_control.errors import ConfigError
from liquid_control.evaluation import plots
from liquid_control.evaluation.metrics import error_by_magnitude, spread_metrics
from liquid_control.evaluation.parts import (PARTS, TrainingParts, match_training_parts,
                                             select_ranges)
from liquid_control.evaluation.perturbations import (
    DEFAULT_PERTURBATIONS, Perturbation, parse_perturbations)
from liquid_control.evaluation.replay import (
    DEFAULT_CHUNK_LENGTH, DEFAULT_MAX_GAP_S, EvaluationResult, FramePrefetcher, episode_imu,
    evaluate_episodes, frame_intervals, segment_starts, trace_neurons)
from liquid_control.evaluation.report import write_report
from liquid_control.evaluation.saliency import visual_backprop
from liquid_control.evaluation.ssim import mean_ssim
from liquid_control.evaluation.verdict import (output_warnings, training_frames_warning,
                                               unit_warnings)

LOGGER = logging.getLogger(__name__)

# Decoded frames are kept for the robustness replays only up to this size. Beyond it, each
# replay decodes the recording again, which is slower but bounded in memory.
MAX_CACHED_FRAME_BYTES = 2 * 1024 ** 3


@dataclass
class EvaluationOptions:
    """Settings of one evaluation run.

    ``saliency_frames`` is the number of sample frames shown with saliency overlays and
    ``ssim_frames`` the number of frames, evenly spread over the recording, whose saliency
    maps are compared between clean and perturbed input. ``trace_seconds`` is the length of
    the neuron activity window, taken from the start of the longest segment.
    ``torch_threads`` is the number of torch CPU threads during the run (None keeps the
    current setting). One thread is the default because replay runs batch 1 frame by
    frame, which gains little from intra-op threads. On a busy 2-core machine (load
    average about 10) two threads took about 8 times the CPU time of one.

    ``part`` is 'all' to score every frame, or one of PARTS to score only that part of
    the model's training data, which the episodes must then be (``match_training_parts``).
    """

    perturbations: Sequence[str] = DEFAULT_PERTURBATIONS
    max_gap_s: float = DEFAULT_MAX_GAP_S
    chunk_length: int = DEFAULT_CHUNK_LENGTH
    saliency_frames: int = 6
    ssim_frames: int = 48
    trace_seconds: float = 30.0
    seed: int = 0
    workers: int = 2
    torch_threads: Optional[int] = 1
    plots: bool = True
    part: str = 'all'
    info: Dict[str, object] = field(default_factory=dict)


def training_baseline(metadata: Mapping, output_names: Sequence[str]) -> Dict[str, float]:
    """Return the constant baseline per output from checkpoint metadata.

    ``training_output_mean`` may be a dict by output name or a list in output order. An
    output without a stored mean gets no baseline (its ``baseline_mae`` is NaN).
    """
    means = metadata.get('training_output_mean') if metadata else None
    if means is None:
        return {}
    if isinstance(means, Mapping):
        return {name: float(means[name]) for name in output_names if name in means}
    values = list(means)
    if len(values) != len(output_names):
        LOGGER.warning('checkpoint training_output_mean has %d values for %d outputs; '
                       'no constant baseline', len(values), len(output_names))
        return {}
    return {name: float(value) for name, value in zip(output_names, values)}


def _json_ready(value):
    """Replace NaN and infinity (invalid in JSON) with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    return value


def _sample_rows(result: EvaluationResult, count: int) -> np.ndarray:
    """Pick ``count`` frames evenly spread over the frames with any scored output."""
    candidates = np.nonzero(np.any(result.scored, axis=1))[0]
    if len(candidates) == 0:
        candidates = np.arange(result.frames)
    count = min(count, len(candidates))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    picks = np.linspace(0, len(candidates) - 1, count).round().astype(np.int64)
    return candidates[np.unique(picks)]


def _frames_at(rows: np.ndarray, result: EvaluationResult, episodes: Sequence,
               frames: Optional[Sequence[np.ndarray]],
               preprocessing: Preprocessing) -> np.ndarray:
    """Return preprocessed float frames (K, 3, h, w) for rows of the replay."""
    offsets = np.concatenate([[0], np.cumsum([len(episode) for episode in episodes])])
    picked = []
    for row in rows:
        episode_number = int(result.episode_index[row])
        index = int(row - offsets[episode_number])
        if frames is not None:
            picked.append(frames[episode_number][index].astype(np.float32) / 255.0)
        else:
            picked.append(preprocessing.apply(episodes[episode_number].load_frame(index)))
    return np.stack(picked).astype(np.float32)


def _saliency_inputs(policy, rows: np.ndarray, result: EvaluationResult, episodes: Sequence,
                     frames: Optional[Sequence[np.ndarray]], preprocessing: Preprocessing
                     ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Return the frames at ``rows`` and, for a policy with a frame gap, the earlier frames.

    The earlier frame of a row is ``frame_gap`` rows before it, or the first row of its
    replay segment (where the state reset) if that is later.
    """
    picked = _frames_at(rows, result, episodes, frames, preprocessing)
    gap = policy.config.frame_gap
    if not gap:
        return picked, None
    segments, first_rows = np.unique(result.segment_index, return_index=True)
    starts = first_rows[np.searchsorted(segments, result.segment_index[rows])]
    earlier_rows = np.maximum(rows - gap, starts)
    return picked, _frames_at(earlier_rows, result, episodes, frames, preprocessing)


def _perturb(perturbation: Perturbation, picked: np.ndarray, earlier: Optional[np.ndarray],
             seed: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Apply ``perturbation`` to the frames and their earlier frames (if any)."""
    rng = np.random.default_rng(seed)
    if earlier is None:
        return perturbation.apply(picked, rng), None
    both = perturbation.apply(np.concatenate([picked, earlier]), rng)
    return both[:len(picked)], both[len(picked):]


def _has_neurons(policy) -> bool:
    """Return whether the policy's core keeps neuron states (the cnn family keeps none)."""
    core = getattr(policy, 'core', None)
    return getattr(core, 'state_size', 1) > 0


def _find_wiring(policy):
    """Return the policy's Wiring if its recurrent cell has one, else None."""
    for module in policy.modules():
        wiring = getattr(module, 'wiring', None)
        if wiring is not None and hasattr(wiring, 'layers'):
            return wiring
    return None


def _neuron_groups(wiring, neuron_count: int) -> Tuple[np.ndarray, Optional[List[tuple]]]:
    """Return the row order of neurons for the heat map and labelled layer bands."""
    if wiring is None or wiring.units != neuron_count:
        return np.arange(neuron_count), None
    order: List[int] = []
    groups = []
    for name, indices in wiring.layers:
        groups.append((name, len(order), len(order) + len(indices)))
        order.extend(indices)
    return np.asarray(order, dtype=np.int64), groups


def _trace_window(policy, episodes: Sequence, frames: Optional[Sequence[np.ndarray]],
                  preprocessing: Preprocessing, options: EvaluationOptions,
                  result: EvaluationResult):
    """Step the policy over the start of the longest segment and return the trace, or None.

    The trace is (times (T,), neuron states (T, N), outputs (T, O)). The times are those
    of ``plots.replay_time`` for ``result``, the clock of the other time plots.
    """
    best = None
    for episode_number, episode in enumerate(episodes):
        timestamps = np.asarray(episode.timestamps, dtype=np.float64)
        if len(timestamps) == 0:
            continue
        bounds = list(segment_starts(timestamps, options.max_gap_s)) + [len(timestamps)]
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if best is None or stop - start > best[2] - best[1]:
                best = (episode_number, start, stop)
    if best is None:
        return None
    episode_number, start, stop = best
    episode = episodes[episode_number]
    timestamps = np.asarray(episode.timestamps, dtype=np.float64)
    dt = frame_intervals(timestamps, options.max_gap_s)
    # Cover trace_seconds of recording, judged by the median interval of the episode.
    count = int(min(stop - start, max(2, round(options.trace_seconds / float(np.median(dt))))))
    stop = start + count
    if frames is not None:
        window = frames[episode_number][start:stop]
    else:
        window = np.stack([
            preprocessing.resize(episode.load_frame(index)).transpose(2, 0, 1)
            for index in range(start, stop)])
    imu = None
    if getattr(policy.config, 'imu_enabled', False):
        imu = episode_imu(episode, len(episode))[start:stop]
    states, outputs = trace_neurons(policy, window, dt[start:stop], imu)
    rows = np.flatnonzero(result.episode_index == episode_number)[start:stop]
    return plots.replay_time(result)[rows], states, outputs


def _write_predictions(path: Path, result: EvaluationResult) -> None:
    with open(path, 'w', newline='') as stream:
        writer = csv.writer(stream)
        header = ['timestamp', 'episode', 'segment']
        for name in result.output_names:
            header += [f'{name}_policy', f'{name}_human']
        writer.writerow(header)
        for row in range(result.frames):
            line = [f'{result.timestamps[row]:.6f}', int(result.episode_index[row]),
                    int(result.segment_index[row])]
            for index in range(len(result.output_names)):
                target = result.targets[row, index]
                line += [f'{result.predictions[row, index]:.6g}',
                         '' if np.isnan(target) else f'{target:.6g}']
            writer.writerow(line)


def evaluate_robustness(policy, episodes: Sequence, perturbations: Sequence[Perturbation],
                        clean: EvaluationResult, options: EvaluationOptions,
                        frames: Optional[Sequence[np.ndarray]] = None,
                        baseline: Optional[Mapping[str, float]] = None
                        ) -> Tuple[Dict[str, dict], Dict[str, EvaluationResult]]:
    """Replay under each perturbation and compare saliency maps with the clean ones.

    Returns (summaries by perturbation name, results by perturbation name). Each summary
    has the metrics of ``EvaluationResult.summary()`` plus ``saliency_ssim``, the mean SSIM
    between VisualBackProp maps of the clean and perturbed frames at ``ssim_frames`` rows.
    """
    if not perturbations:
        return {}, {}
    preprocessing = Preprocessing.from_dict(policy.config.preprocessing)
    rows = _sample_rows(clean, options.ssim_frames)
    clean_frames, clean_earlier, clean_maps = None, None, None
    if len(rows):
        clean_frames, clean_earlier = _saliency_inputs(policy, rows, clean, episodes, frames,
                                                       preprocessing)
        clean_maps = visual_backprop(policy, clean_frames, clean_earlier)
    summaries: Dict[str, dict] = {}
    results: Dict[str, EvaluationResult] = {}
    for perturbation in perturbations:
        result = evaluate_episodes(
            policy, episodes, perturbation, baseline=baseline, frames=frames,
            max_gap_s=options.max_gap_s, chunk_length=options.chunk_length,
            seed=options.seed, workers=options.workers)
        summary = result.summary()
        summary['saliency_ssim'] = math.nan
        if clean_maps is not None:
            perturbed = _perturb(perturbation, clean_frames, clean_earlier, options.seed)
            summary['saliency_ssim'] = mean_ssim(clean_maps,
                                                 visual_backprop(policy, *perturbed))
        summaries[perturbation.name] = summary
        results[perturbation.name] = result
        LOGGER.info('%s: %s, saliency SSIM %.3f', perturbation.name,
                    _short_metrics(result), summary['saliency_ssim'])
    return summaries, results


def _short_metrics(result: EvaluationResult) -> str:
    return ', '.join(f'{name} MAE {values["mae"]:.4f} r {values["pearson"]:.3f}'
                     for name, values in result.metrics.items())


def _file_name(text: str) -> str:
    return ''.join(character if character.isalnum() or character in '-_.' else '_'
                   for character in text)


def _draw_plots(out_dir: Path, policy, result: EvaluationResult, robustness: Mapping,
                robustness_results: Mapping[str, EvaluationResult], episodes: Sequence,
                frames: Optional[Sequence[np.ndarray]], metrics: Mapping,
                options: EvaluationOptions) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Draw every plot into ``out_dir`` and return (file name, caption) pairs and notes.

    The notes name the plots left out and the reason, for the report.
    """
    preprocessing = Preprocessing.from_dict(policy.config.preprocessing)
    figures: List[Tuple[str, str]] = []
    notes: List[str] = []
    for name in result.output_names:
        plots.plot_time_series(result, name, out_dir / f'{name}_time.png')
        if not metrics.get('scored_frames'):
            figures.append((f'{name}_time.png', f'{name}: the policy over the recording; '
                            'dotted lines mark state resets.'))
            continue  # without human commands a scatter or an error histogram is empty
        figures.append((f'{name}_time.png', f'{name}: the policy (red) and the human '
                        '(grey) over the recording; dotted lines mark state resets.'))
        plots.plot_scatter(result, name, out_dir / f'{name}_scatter.png')
        figures.append((f'{name}_scatter.png', f'{name}: policy against human on scored '
                        'frames; points on the diagonal are exact.'))
        plots.plot_error_histogram(result, name, out_dir / f'{name}_errors.png')
        figures.append((f'{name}_errors.png', f'{name}: distribution of the policy error '
                        'and of the constant baseline error.'))

    if robustness:
        summaries = {'clean': metrics}
        summaries.update(robustness)
        ssim_values = {name: values['saliency_ssim'] for name, values in robustness.items()}
        if not any(math.isfinite(value) for value in ssim_values.values()):
            ssim_values = None
        else:
            ssim_values['clean'] = 1.0
        first = result.output_names[0]
        drawn = plots.plot_robustness(summaries, result.output_names,
                                      out_dir / 'robustness.png', ssim_values)
        if drawn is not None and metrics.get('scored_frames'):
            figures.append(('robustness.png', 'Pearson r and MAE of every output under each '
                            'image perturbation, and how much the saliency maps change '
                            '(SSIM against the clean maps).'))
        elif drawn is not None:
            figures.append(('robustness.png', 'How much the saliency maps change under each '
                            'image perturbation (SSIM against the clean maps). Without human '
                            'commands there is no accuracy to compare.'))
        noisiest = next((name for name in robustness if name.startswith('noise')), None)
        if noisiest is not None:
            plots.plot_time_series(robustness_results[noisiest], first,
                                   out_dir / f'{first}_time_{_file_name(noisiest)}.png')
            figures.append((f'{first}_time_{_file_name(noisiest)}.png',
                            f'{first} over the recording with {noisiest} on every frame.'))

    rows = _sample_rows(result, options.saliency_frames)
    if len(rows):
        sample, earlier = _saliency_inputs(policy, rows, result, episodes, frames,
                                           preprocessing)
        maps = visual_backprop(policy, sample, earlier)
        times = plots.replay_time(result)
        titles = [f't = {times[row]:.1f} s' for row in rows]
        plots.plot_saliency(sample, maps, out_dir / 'saliency.png', titles)
        figures.append(('saliency.png', 'VisualBackProp saliency on sample frames (t on '
                        'the time axis of the plots above): the pixels that feed the '
                        'deepest conv features, on the frame as the network sees it (after '
                        'crop and resize).'))
        noise = next((name for name in robustness if name.startswith('noise')), None)
        if noise is not None:
            perturbation = parse_perturbations([noise])[0]
            noisy, noisy_earlier = _perturb(perturbation, sample, earlier, options.seed)
            plots.plot_saliency(noisy, visual_backprop(policy, noisy, noisy_earlier),
                                out_dir / 'saliency_noise.png', titles)
            figures.append(('saliency_noise.png', f'The same frames with {noise}, and where '
                            'the encoder looks then.'))

    wiring = _find_wiring(policy)
    trace = None
    if _has_neurons(policy):
        trace = _trace_window(policy, episodes, frames, preprocessing, options, result)
    else:
        notes.append(f'The {policy.config.family} family keeps no state from one frame to '
                     'the next, so it has no neurons to plot: neurons.png is left out.')
    if trace is not None:
        times, states, outputs = trace
        order, groups = _neuron_groups(wiring, states.shape[1])
        plots.plot_neuron_activity(
            times, states[:, order], out_dir / 'neurons.png', groups,
            {name: outputs[:, index] for index, name in enumerate(result.output_names)},
            neuron_ids=order)
        figures.append(('neurons.png', f'Neuron states over {times[-1] - times[0]:.0f} s from '
                        f't = {times[0]:.1f} s, the start of the longest segment, stepped one '
                        'frame at a time, with the outputs below. The time axis is that of '
                        'the plots above.'))
    if wiring is not None:
        plots.plot_wiring(wiring, out_dir / 'wiring.png', result.output_names)
        figures.append(('wiring.png', 'The wiring of the recurrent cell.'))
    return figures, notes


def run_evaluation(policy, episodes: Sequence, out_dir: Path,
                   metadata: Optional[Mapping] = None,
                   options: Optional[EvaluationOptions] = None,
                   frames: Optional[Sequence[np.ndarray]] = None) -> Dict[str, object]:
    """Evaluate ``policy`` on ``episodes``, write every output file and return the metrics.

    The returned dict is what ``metrics.json`` contains (with NaN where a metric is
    undefined; the file has null there). ``eval_seconds`` and ``realtime_factor`` cover
    decoding, preprocessing and the clean replay, not the robustness replays or plots.
    ``eval_cpu_seconds`` is the process CPU time of the same work, which other load on
    the machine affects less than the wall-clock time.

    ``frames`` are the episodes' frames as ``load_frames`` returns them, for a caller that
    has them already (decoded with the policy's preprocessing). Decoding then drops out of
    ``eval_seconds``.
    """
    options = options or EvaluationOptions()
    previous_threads = torch.get_num_threads()
    if options.torch_threads is not None:
        torch.set_num_threads(options.torch_threads)
    try:
        return _run_evaluation(policy, episodes, Path(out_dir), metadata or {}, options,
                               frames)
    finally:
        torch.set_num_threads(previous_threads)


def _part_episodes(episodes: Sequence, frames: Optional[Sequence[np.ndarray]],
                   parts: Optional[TrainingParts], mismatch: str, part: str,
                   metadata: Mapping) -> Tuple[list, Optional[list]]:
    """Return the runs of frames of ``part`` as episodes, with their frames if given."""
    if parts is None:
        recorded = metadata.get('data_sources')
        sources = ', '.join(str(source) for source in recorded
                            if isinstance(source, str)) if isinstance(recorded, list) else ''
        raise ConfigError(
            f'--part {part} needs the data the model was trained on, and this is not it: '
            f'{mismatch}. Evaluate the training data ({sources or "sources not recorded"}), '
            'imported with the label options of the training run, or use --part all')
    ranges = parts.ranges(part)
    if not ranges:
        option = {'test': ' (train with --test-fraction, e.g. 0.2, to keep one)',
                  'validation': ' (train with --validation-fraction above 0 to keep one)'}
        raise ConfigError(f'--part {part}: the model has no {part} part in its training '
                          f'split{option.get(part, "")}; choose another part or --part all')
    LOGGER.info('scoring the %s part only: %d frames in %d run(s), each from a fresh state',
                part, sum(len(item) for item in ranges), len(ranges))
    return select_ranges(episodes, frames, ranges)


def _add_output_statistics(metrics: Dict[str, object], result: EvaluationResult,
                           breakdown: bool = True) -> None:
    """Add each output's unit, spread and (with ``breakdown``) error by magnitude."""
    for index, name in enumerate(result.output_names):
        prediction = result.predictions[:, index]
        target = np.where(result.scored[:, index], result.targets[:, index], np.nan)
        values = metrics[name]
        values['unit'] = result.output_units[index]
        values.update(spread_metrics(prediction, target))
        if breakdown:
            values['error_by_magnitude'] = error_by_magnitude(prediction, target)


def _score_parts(policy, episodes: Sequence, frames: Optional[Sequence[np.ndarray]],
                 parts: TrainingParts, baseline: Mapping[str, float],
                 options: EvaluationOptions) -> Dict[str, dict]:
    """Replay each part of the training data on its own and return its metrics by part.

    Each run of a part's frames starts from a fresh state, as ``Trainer.score_segments``
    scores the validation and test parts, so the test part's metrics here are those of
    ``part='test'`` and close to the checkpoint's ``test_metrics``.
    """
    scores = {}
    for part in PARTS:
        ranges = parts.ranges(part)
        if not ranges:
            continue
        slices, slice_frames = select_ranges(episodes, frames, ranges)
        result = evaluate_episodes(
            policy, slices, baseline=baseline, frames=slice_frames,
            max_gap_s=options.max_gap_s, chunk_length=options.chunk_length,
            seed=options.seed, workers=options.workers)
        summary = result.summary()
        for key in ('eval_seconds', 'realtime_factor'):
            summary.pop(key)
        _add_output_statistics(summary, result, breakdown=False)
        scores[part] = summary
        LOGGER.info('%s part: %d frames; %s', part, result.frames, _short_metrics(result))
    return scores


def _collect_warnings(metrics: Mapping, policy, episodes: Sequence
                      ) -> List[Dict[str, object]]:
    """Return the warnings on the run (see ``verdict``), the most general first.

    On the model's own training data, a check that fails on the held-out part (test, else
    validation) is reported for that part alone, because the scores over all frames
    include training frames. A check that fails over all frames but not on that part is
    reported for all frames.
    """
    output_names = tuple(policy.output_names)
    parts = metrics.get('parts') or {}
    held_out = next((part for part in ('test', 'validation') if part in parts), None)
    warnings = []
    part_frames = metrics.get('part_frames') or {}
    if part_frames.get('train'):
        warnings.append(training_frames_warning(part_frames, int(metrics['frames']),
                                                held_out))
    warnings += unit_warnings(output_names, policy.output_units, episodes)
    for name in output_names:
        overall = output_warnings(name, metrics[name])
        if held_out is None:
            warnings += overall
            continue
        held_out_warnings = output_warnings(name, parts[held_out][name], held_out)
        failed = {warning['check'] for warning in held_out_warnings}
        warnings += held_out_warnings
        warnings += [warning for warning in overall if warning['check'] not in failed]
    return warnings


def _run_evaluation(policy, episodes: Sequence, out_dir: Path, metadata: Mapping,
                    options: EvaluationOptions,
                    frames: Optional[Sequence[np.ndarray]]) -> Dict[str, object]:
    if options.part not in ('all',) + PARTS:
        raise ConfigError(f'part {options.part!r} is invalid: use all, '
                          f'{", ".join(PARTS)}')
    perturbations = parse_perturbations(options.perturbations)
    output_names = tuple(policy.output_names)
    baseline = training_baseline(metadata, output_names)
    preprocessing = Preprocessing.from_dict(policy.config.preprocessing)
    parts, mismatch = match_training_parts(metadata, episodes)
    notes = []
    if options.part != 'all':
        episodes, frames = _part_episodes(episodes, frames, parts, mismatch, options.part,
                                          metadata)
        notes.append(f'Only the {options.part} part of the training data is scored: '
                     f'{sum(len(episode) for episode in episodes)} frames in '
                     f'{len(episodes)} run(s). Each run starts from a fresh state, as '
                     'training scores its validation and test parts.')
        parts = None
    out_dir.mkdir(parents=True, exist_ok=True)

    # Unless the caller passed frames, they decode in a background thread while the policy
    # replays the episodes before them. The wall-clock and CPU time cover both.
    started = time.perf_counter()
    cpu_started = time.process_time()
    if frames is not None:
        result = evaluate_episodes(policy, episodes, baseline=baseline, frames=frames,
                                   max_gap_s=options.max_gap_s,
                                   chunk_length=options.chunk_length, seed=options.seed)
    else:
        with FramePrefetcher(episodes, preprocessing) as prefetcher:
            result = evaluate_episodes(policy, episodes, baseline=baseline,
                                       frames=prefetcher, max_gap_s=options.max_gap_s,
                                       chunk_length=options.chunk_length, seed=options.seed)
            frames = [prefetcher[index] for index in range(len(prefetcher))]
    result.eval_seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    LOGGER.info('clean: %d frames, %.1f s recorded, evaluated in %.2f s (%.0fx real time); '
                '%s', result.frames, result.duration_s, result.eval_seconds,
                result.realtime_factor, _short_metrics(result))

    frame_bytes = sum(array.nbytes for array in frames)
    if frame_bytes > MAX_CACHED_FRAME_BYTES:
        LOGGER.info('decoded frames take %.1f GiB; robustness replays decode them again',
                    frame_bytes / 1024 ** 3)
        frames = None

    metrics: Dict[str, object] = result.summary()
    _add_output_statistics(metrics, result)
    metrics['eval_cpu_seconds'] = cpu_seconds
    metrics['max_gap_s'] = options.max_gap_s
    metrics['part'] = options.part
    if parts is not None:
        metrics['part_frames'] = parts.frame_counts()
        metrics['parts'] = _score_parts(policy, episodes, frames, parts, baseline, options)
    robustness, robustness_results = evaluate_robustness(
        policy, episodes, perturbations, result, options, frames, baseline)
    metrics['robustness'] = robustness
    metrics['warnings'] = _collect_warnings(metrics, policy, episodes)

    (out_dir / 'metrics.json').write_text(
        json.dumps(_json_ready(metrics), indent=2, allow_nan=False) + '\n')
    _write_predictions(out_dir / 'predictions.csv', result)
    if options.plots:
        figures, plot_notes = _draw_plots(out_dir, policy, result, robustness,
                                          robustness_results, episodes, frames, metrics,
                                          options)
        notes.append(f'Frames without a human command for an output are replayed but not '
                     f'scored for it. State resets at each episode start and after gaps '
                     f'longer than {options.max_gap_s} s.')
        write_report(out_dir, _json_ready(metrics), output_names, figures, options.info,
                     notes + plot_notes)
    # Last, so that the warnings appear next to the caller's summary of the results.
    for warning in metrics['warnings']:
        LOGGER.warning('%s', warning['message'])
    return metrics
