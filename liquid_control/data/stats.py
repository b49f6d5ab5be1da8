"""Statistics of a dataset of episodes: frames, duration, rate, gaps and command spread."""

import math
from typing import List, Optional, Sequence

import numpy as np

from liquid_control.data.episodes import COMMAND_NAMES, Episode


def _field_statistics(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {'count': 0, 'mean': None, 'std': None, 'min': None, 'max': None}
    return {'count': int(finite.size), 'mean': float(finite.mean()),
            'std': float(finite.std()), 'min': float(finite.min()),
            'max': float(finite.max())}


def _episode_gaps(episode: Episode, max_gap_s: Optional[float]) -> List[dict]:
    if len(episode) < 2:
        return []
    limit = episode.default_max_gap_s() if max_gap_s is None else max_gap_s
    steps = np.diff(episode.timestamps)
    return [{'after_frame': int(i), 'seconds': float(steps[i])}
            for i in np.flatnonzero(steps > limit)]


def episode_statistics(episode: Episode, max_gap_s: Optional[float] = None) -> dict:
    """Return the statistics of one episode as a JSON-able dict.

    ``rate_hz`` is the inverse of the median frame period; gaps are steps longer than
    ``max_gap_s`` (default three median periods).
    """
    count = len(episode)
    duration = float(episode.timestamps[-1] - episode.timestamps[0]) if count else 0.0
    period = episode.median_period_s if count > 1 else math.nan
    return {
        'name': episode.name,
        'folder': str(episode.folder),
        'finished': episode.finished,
        'frames': count,
        'valid_frames': int(episode.valid.sum()),
        'duration_s': duration,
        'rate_hz': 1.0 / period if count > 1 and period > 0 else None,
        'has_imu': episode.has_imu,
        'has_commands': episode.has_commands,
        'source': _source_kind(episode.metadata),
        'gaps': _episode_gaps(episode, max_gap_s),
    }


def _source_kind(metadata: dict) -> Optional[str]:
    """Return metadata's source.kind, or None when the metadata does not have one."""
    source = metadata.get('source')
    kind = source.get('kind') if isinstance(source, dict) else None
    return kind if isinstance(kind, str) else None


def dataset_statistics(episodes: Sequence[Episode], max_gap_s: Optional[float] = None
                       ) -> dict:
    """Return totals, per-episode statistics and per-command-field statistics.

    Command statistics cover the valid frames only; ``rate_hz`` is the frame-weighted mean
    of the episode rates.
    """
    per_episode = [episode_statistics(e, max_gap_s) for e in episodes]
    frames = sum(s['frames'] for s in per_episode)
    rates = [(s['rate_hz'], s['frames']) for s in per_episode if s['rate_hz']]
    weight = sum(count for _, count in rates)
    commands = {}
    for name in COMMAND_NAMES:
        values = [e.command(name)[e.valid] for e in episodes]
        commands[name] = _field_statistics(np.concatenate(values) if values else np.zeros(0))
    imu = np.concatenate([e.imu for e in episodes]) if episodes else np.zeros((0, 6))
    between = []
    for previous, following in zip(episodes[:-1], episodes[1:]):
        if len(previous) and len(following):
            between.append({'after_episode': previous.name,
                            'seconds': float(following.timestamps[0] - previous.timestamps[-1])})
    return {
        'episodes': len(episodes),
        'frames': frames,
        'valid_frames': sum(s['valid_frames'] for s in per_episode),
        'duration_s': sum(s['duration_s'] for s in per_episode),
        'rate_hz': sum(rate * count for rate, count in rates) / weight if weight else None,
        'gaps': sum(len(s['gaps']) for s in per_episode),
        'between_episodes': between,
        'frames_with_imu': int(np.isfinite(imu).all(axis=1).sum()),
        'commands': commands,
        'per_episode': per_episode,
    }


def format_statistics(statistics: dict) -> str:
    """Format ``dataset_statistics`` output as a short human-readable report."""
    rate = statistics['rate_hz']
    lines = [
        f"episodes: {statistics['episodes']}",
        f"frames: {statistics['frames']} ({statistics['valid_frames']} with a valid command, "
        f"{statistics['frames_with_imu']} with IMU)",
        f"duration: {statistics['duration_s']:.1f} s",
        f"rate: {rate:.2f} Hz" if rate else 'rate: n/a',
        f"gaps inside episodes: {statistics['gaps']}",
    ]
    if statistics['between_episodes']:
        pauses = ', '.join(f"{g['seconds']:.1f} s after {g['after_episode']}"
                           for g in statistics['between_episodes'])
        lines.append(f'time between episodes: {pauses}')
    lines.append('commands (valid frames):')
    for name, field in statistics['commands'].items():
        if field['count'] == 0:
            lines.append(f'  {name}: none')
            continue
        lines.append(f"  {name}: mean {field['mean']:+.4f}  std {field['std']:.4f}  "
                     f"min {field['min']:+.4f}  max {field['max']:+.4f}")
    lines.append('per episode:')
    for episode in statistics['per_episode']:
        rate = f"{episode['rate_hz']:.2f} Hz" if episode['rate_hz'] else 'n/a'
        state = '' if episode['finished'] else ', unfinished'
        gaps = ', '.join(f"{g['seconds']:.2f} s after frame {g['after_frame']}"
                         for g in episode['gaps']) or 'none'
        lines.append(f"  {episode['name']}: {episode['frames']} frames, "
                     f"{episode['duration_s']:.1f} s, {rate}, gaps: {gaps}{state}")
    return '\n'.join(lines)
