"""A full evaluation run: clean replay, robustness, saliency, neuron traces, files.

``run_evaluation`` is what ``liquid-control evaluate`` does, as a library call, so other
tools (``liquid-control compare``) produce the same numbers. It writes, into ``out_dir``:
``metrics.json``, ``predictions.csv``, the PNG plots and ``report.html``.
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
from liquid_control.evaluation import plots
from liquid_control.evaluation.perturbations import (
    DEFAULT_PERTURBATIONS, Perturbation, parse_perturbations)
from liquid_control.evaluation.replay import (
    DEFAULT_CHUNK_LENGTH, DEFAULT_MAX_GAP_S, EvaluationResult, FramePrefetcher, episode_imu,
    evaluate_episodes, frame_intervals, segment_starts, trace_neurons)
from liquid_control.evaluation.report import write_report
from liquid_control.evaluation.saliency import visual_backprop
from liquid_control.evaluation.ssim import mean_ssim

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
                  preprocessing: Preprocessing, options: EvaluationOptions):
    """Step the policy over the start of the longest segment; return the trace or None."""
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
    return timestamps[start:stop] - timestamps[start], states, outputs


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
                options: EvaluationOptions) -> List[Tuple[str, str]]:
    """Draw every plot into ``out_dir`` and return (file name, caption) pairs."""
    preprocessing = Preprocessing.from_dict(policy.config.preprocessing)
    figures: List[Tuple[str, str]] = []
    for name in result.output_names:
        plots.plot_time_series(result, name, out_dir / f'{name}_time.png')
        figures.append((f'{name}_time.png', f'{name}: the policy (red) and the human '
                        '(grey) over the recording; dotted lines mark state resets.'))
        if not metrics.get('scored_frames'):
            continue  # without human commands a scatter or an error histogram is empty
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
        ssim_values['clean'] = 1.0
        first = result.output_names[0]
        plots.plot_robustness(summaries, first, out_dir / 'robustness.png', ssim_values)
        figures.append(('robustness.png', f'{first} under each image perturbation, and how '
                        'much the saliency maps change (SSIM against the clean maps).'))
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
    trace = _trace_window(policy, episodes, frames, preprocessing, options)
    if trace is not None:
        times, states, outputs = trace
        order, groups = _neuron_groups(wiring, states.shape[1])
        plots.plot_neuron_activity(
            times, states[:, order], out_dir / 'neurons.png', groups,
            {name: outputs[:, index] for index, name in enumerate(result.output_names)},
            neuron_ids=order)
        figures.append(('neurons.png', f'Neuron states over the first {times[-1]:.0f} s of '
                        'the longest segment, stepped one frame at a time, with the outputs '
                        'below.'))
    if wiring is not None:
        plots.plot_wiring(wiring, out_dir / 'wiring.png', result.output_names)
        figures.append(('wiring.png', 'The wiring of the recurrent cell.'))
    return figures


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


def _run_evaluation(policy, episodes: Sequence, out_dir: Path, metadata: Mapping,
                    options: EvaluationOptions,
                    frames: Optional[Sequence[np.ndarray]]) -> Dict[str, object]:
    out_dir.mkdir(parents=True, exist_ok=True)
    perturbations = parse_perturbations(options.perturbations)
    output_names = tuple(policy.output_names)
    baseline = training_baseline(metadata, output_names)
    preprocessing = Preprocessing.from_dict(policy.config.preprocessing)

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
    metrics['eval_cpu_seconds'] = cpu_seconds
    metrics['max_gap_s'] = options.max_gap_s
    robustness, robustness_results = evaluate_robustness(
        policy, episodes, perturbations, result, options, frames, baseline)
    metrics['robustness'] = robustness

    (out_dir / 'metrics.json').write_text(
        json.dumps(_json_ready(metrics), indent=2, allow_nan=False) + '\n')
    _write_predictions(out_dir / 'predictions.csv', result)
    if options.plots:
        figures = _draw_plots(out_dir, policy, result, robustness, robustness_results,
                              episodes, frames, metrics, options)
        notes = [f'Frames without a human command for an output are replayed but not '
                 f'scored for it. State resets at each episode start and after gaps longer '
                 f'than {options.max_gap_s} s.']
        write_report(out_dir, _json_ready(metrics), output_names, figures, options.info,
                     notes)
    return metrics
