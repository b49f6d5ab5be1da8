"""Train or load several model families on the same data and tabulate how they compare.

Every family shares the cached frames, the split, the encoder settings and the training
loop. Each model is scored by the evaluation pipeline on the held-out test part when
the config keeps one (``test_fraction > 0``), else on the validation part, which early
stopping has seen and which therefore flatters every model a little.
"""

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from liquid_control.data.preprocess import Preprocessing
from liquid_control.errors import CheckpointError, ConfigError
from liquid_control.evaluation.metrics import MAX_LAG_FRAMES
from liquid_control.evaluation.parts import episodes_problem
from liquid_control.evaluation.pipeline import EvaluationOptions, run_evaluation
from liquid_control.model.checkpoint import load_checkpoint
from liquid_control.training.config import FAMILIES, TrainConfig
from liquid_control.training.dataset import Split, segment_slices
from liquid_control.training.trainer import (OutputPaths, PreparedData, Trainer,
                                             build_policy_config, load_pretrained, prepare_data,
                                             pretraining_key, save_pretrained,
                                             training_data_digest, training_metadata_problem)

LOGGER = logging.getLogger(__name__)

DEFAULT_MODELS = ('ncp_ltc', 'ncp_cfc', 'lstm:64', 'cnn')
ROBUSTNESS = ('noise:0.1', 'noise:0.2', 'noise:0.3', 'brightness:+0.2', 'brightness:-0.2',
              'blur:1.5')


@dataclass(frozen=True)
class ModelSpec:
    """One entry of a comparison: a family and optionally its unit count, e.g. ``lstm:64``."""

    family: str
    units: Optional[int] = None

    @property
    def name(self) -> str:
        """Return the spec as written on the command line, e.g. ``lstm-64``."""
        return self.family if self.units is None else f'{self.family}-{self.units}'

    @classmethod
    def parse(cls, text: str) -> 'ModelSpec':
        """Parse ``FAMILY`` or ``FAMILY:UNITS``."""
        family, separator, units = text.partition(':')
        if family not in FAMILIES:
            raise ConfigError(f'model {text!r} is invalid: use FAMILY or FAMILY:UNITS with '
                              f'FAMILY one of {FAMILIES}, e.g. lstm:64')
        if not separator:
            return cls(family)
        try:
            count = int(units)
        except ValueError:
            count = 0
        if count < 1:
            raise ConfigError(f'model {text!r} has an invalid unit count {units!r}: use a '
                              'positive integer, e.g. lstm:64')
        return cls(family, count)

    def config(self, base: TrainConfig, seed: int) -> TrainConfig:
        """Return ``base`` with this family, unit count and ``seed``."""
        overrides = {'family': self.family, 'seed': seed}
        if self.units is not None:
            overrides['model.units'] = self.units
        return base.with_overrides(overrides)


def scored_part(data: PreparedData):
    """Return (name, segments) of the part that the comparison scores."""
    if data.split.test_segments:
        return 'test', data.split.test_segments
    if data.split.validation_segments:
        return 'validation', data.split.validation_segments
    raise ConfigError('compare has no frames to score the models on: validation_fraction '
                      'and test_fraction are both 0; set test_fraction above 0')


def _train_or_load(spec: ModelSpec, config: TrainConfig, data: PreparedData, path: Path,
                   reuse: bool, sources: Sequence[str], progress: bool):
    if reuse and (path.exists() or path.is_symlink()):
        LOGGER.info('%s: loading %s (--reuse)', spec.name, path)
        # The best checkpoint records the time up to its epoch; the last one the whole run.
        last = OutputPaths.from_out(path).last
        try:
            policy, metadata = load_checkpoint(path)
            totals = load_checkpoint(last)[1] if last.is_file() else metadata
            for checked, checked_metadata in ((path, metadata), (last, totals)):
                problem = training_metadata_problem(checked_metadata)
                if problem is not None:
                    raise CheckpointError(f'checkpoint {checked} was not written by '
                                          f'liquid-control train: {problem}')
        except CheckpointError as error:
            raise CheckpointError(f'{error}; with --reuse, delete the damaged file to train '
                                  'that model again') from error
        saved = metadata.get('train_config', {})
        if saved.get('family') != spec.family:
            raise ConfigError(f'{path} contains a {saved.get("family")} model, not '
                              f'{spec.family}; delete it or drop --reuse')
        if policy.config.imu_enabled != data.use_imu:
            # The comparison's other models get the IMU input exactly when the data has it.
            theirs = 'with' if policy.config.imu_enabled else 'without'
            ours = 'uses' if data.use_imu else 'does not use'
            raise ConfigError(f'{path} was trained {theirs} IMU input, but this comparison '
                              f'{ours} the IMU readings (use_imu={config.use_imu}); delete it '
                              'or drop --reuse')
        # A checkpoint of other settings would put another model's scores in the table.
        # Model settings count as the family's merged ones, wherever the file wrote them.
        expected = config.to_dict()
        expected['model'] = config.model_settings()
        saved = dict(saved)
        if 'model' in saved:
            saved['model'] = _saved_model_settings(saved, spec.family)
        for key in ('model', 'preprocessing', 'outputs', 'seed'):
            if key in saved and saved[key] != expected[key]:
                raise ConfigError(f'{path} was trained with {key} {saved[key]!r}, but this '
                                  f'comparison uses {expected[key]!r}; delete it or drop '
                                  '--reuse')
        problem = training_data_problem(metadata, data, config.split)
        if problem is not None:
            raise ConfigError(f'{path} was not trained on the training part of this '
                              f'comparison: {problem}, so it could be scored on frames it '
                              'trained on; to score it, give the DATA and split settings '
                              'that trained it; to train it again, delete it or drop --reuse')
        return (policy, metadata, float(totals.get('train_seconds', math.nan)),
                int(totals.get('epoch', metadata.get('epoch', 0))))
    # The encoder pretraining of a seed is shared by every family and kept on disk, so a
    # run that stopped after it, or one that adds a family later, does not repeat it.
    pretrained = path.parent / f'pretrained-s{config.seed}.lcm'
    pretrains = config.pretrain_epochs > 0 or config.pretrain_minutes > 0
    if pretrains and pretrained.exists() and not pretrained.is_file():
        # Checked before training, because the file is written only after it.
        raise ConfigError(f'{pretrained} is not a file, but compare keeps the pretrained '
                          f'encoder of seed {config.seed} in a file of that name; remove or '
                          'rename it')
    known = pretraining_key(config) in data.pretrained
    if pretrains and not known:
        try:
            known = load_pretrained(data, config, pretrained)
        except CheckpointError as error:
            LOGGER.warning('not reusing the pretrained encoder: %s; pretraining again', error)
    trainer = Trainer(config, [], path, sources=sources, progress=progress, data=data)
    result = trainer.run()
    if pretrains and not known:
        save_pretrained(data, config, pretrained)
    policy, metadata = load_checkpoint(result.paths.best)
    return policy, metadata, result.train_seconds, result.epochs_run


def check_models(base: TrainConfig, models: Sequence[ModelSpec], seeds: Sequence[int],
                 use_imu: bool, units: Sequence[str]) -> None:
    """Raise ConfigError for the first model whose settings the policy rejects.

    That includes a model too large for ``load_checkpoint`` to load.
    """
    preprocessing = Preprocessing.from_dict(base.preprocessing)
    for spec in models:
        for seed in seeds:
            try:
                build_policy_config(spec.config(base, seed), preprocessing, use_imu, units)
            except ConfigError as error:
                raise ConfigError(f'model {spec.name}: {error}') from error


def training_data_problem(metadata: dict, data: PreparedData, split: str) -> Optional[str]:
    """Return how a checkpoint's record of its training data differs from ``data``, or None.

    ``split`` is the split mode that made ``data.split``. When the checkpoint's
    ``training_data_sha256`` (``training_data_digest``) matches ``data``,
    the episodes may have been read from anywhere. Otherwise they must match as in
    ``evaluate --part`` (``episodes_problem``): the same folder, or the same episode of an
    import of one of the checkpoint's ``data_sources``, even where the import cache folder
    has another name. The validation and test ranges are compared by episode position.
    NOTE: a checkpoint written before the digest was recorded passes with other recordings
    under the same paths and with the same frame counts.
    """
    folders = [cached.name for cached in data.episodes]
    ours = {
        'frames': int(sum(len(cached) for cached in data.episodes)),
        'split': split,
        'validation': Split.describe_segments(data.episodes, data.split.validation_segments),
        'test': Split.describe_segments(data.episodes, data.split.test_segments),
        'training_windows': len(data.split.train_windows),
    }
    # A JSON round trip gives the types that the checkpoint's metadata has.
    ours = json.loads(json.dumps(ours))
    missing = [key for key in ['episodes', *ours] if key not in metadata]
    if missing:
        return f'its metadata does not record {", ".join(missing)}'
    recorded = metadata.get('training_data_sha256')
    same_frames = recorded is not None and recorded == training_data_digest(data)
    if not same_frames:
        problem = episodes_problem(metadata, folders)
        if problem is not None:
            return problem
    theirs = dict(metadata)
    for key in ('validation', 'test'):
        ours[key] = _by_position(ours[key], folders)
        theirs[key] = _by_position(metadata[key], metadata['episodes'])
    differing = [key for key in ours if theirs[key] != ours[key]]
    if not differing:
        if recorded is not None and not same_frames:
            return 'its frames or labels differ (training_data_sha256)'
        return None
    first = differing[0]
    return (f'its {", ".join(differing)} differ, e.g. {first} is {_shorten(theirs[first])} '
            f'in the checkpoint but {_shorten(ours[first])} here')


def _by_position(ranges, folders: Sequence[str]) -> list:
    """Return stored ranges with each episode folder replaced by its position in ``folders``."""
    if not isinstance(ranges, list):
        return ranges
    positions = {str(folder): number for number, folder in enumerate(folders)}
    return [{**entry, 'episode': positions.get(str(entry.get('episode')), entry.get('episode'))}
            if isinstance(entry, dict) else entry for entry in ranges]


def _shorten(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _saved_model_settings(saved: dict, family: str):
    """Return the model settings that a checkpoint's training config gave ``family``."""
    model = saved.get('model')
    own = saved.get('family_model')
    own = own.get(family) if isinstance(own, dict) else None
    if not isinstance(model, dict) or not isinstance(own, dict):
        return model
    return {**model, **own}


def _row(spec: ModelSpec, seed: int, policy, metadata: dict, train_seconds: float,
         epochs: int, metrics: dict, output: str) -> Dict[str, object]:
    counts = policy.parameter_counts()
    clean = metrics.get(output, {})
    row = {
        'model': spec.name, 'family': spec.family, 'seed': seed,
        'encoder_parameters': counts.get('encoder'),
        'recurrent_parameters': counts.get('recurrent'),
        'head_parameters': counts.get('head'),
        'total_parameters': counts.get('total'),
        'train_minutes': train_seconds / 60.0,
        'epochs': epochs, 'best_epoch': metadata.get('best_epoch'),
        'pretrain_steps': (metadata.get('pretraining') or {}).get('steps'),
        'mae': clean.get('mae'), 'rmse': clean.get('rmse'), 'pearson': clean.get('pearson'),
        'r2': clean.get('r2'), 'baseline_mae': clean.get('baseline_mae'),
        'mean_abs_change': clean.get('mean_abs_change'),
        'target_mean_abs_change': clean.get('target_mean_abs_change'),
        'lag_s': _clear_lag(clean), 'pearson_fast': clean.get('pearson_fast'),
        'realtime_factor': metrics.get('realtime_factor'),
    }
    baseline = clean.get('baseline_mae')
    row['mae_ratio'] = (clean['mae'] / baseline
                        if baseline and clean.get('mae') is not None else math.nan)
    for name, summary in (metrics.get('robustness') or {}).items():
        values = summary.get(output, {})
        row[f'{name} pearson'] = values.get('pearson')
        row[f'{name} mae'] = values.get('mae')
    return row


def compare(base: TrainConfig, episodes: Sequence, out_dir: Path,
            models: Sequence[ModelSpec] = tuple(ModelSpec.parse(m) for m in DEFAULT_MODELS),
            seeds: Sequence[int] = (0,), perturbations: Sequence[str] = ROBUSTNESS,
            reuse: bool = False, plots: bool = False, sources: Sequence[str] = (),
            progress: bool = True) -> List[Dict[str, object]]:
    """Train (or, with ``reuse``, load) every model and seed; score each on the same frames.

    Writes ``MODEL-sSEED.lcm`` checkpoints, one evaluation folder per run, and
    ``compare.json`` plus ``compare.md`` (one row per run, then the mean over seeds) into
    ``out_dir``. Returns the rows.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # IMU input only adds to a model, so a model too large without it fails before the
    # frames are cached, and every model is checked with the data's IMU use before any
    # of them trains.
    check_models(base, models, seeds, use_imu=False, units=[''] * len(base.outputs))
    data = prepare_data(base, episodes)
    check_models(base, models, seeds, use_imu=data.use_imu, units=data.units)
    part, segments = scored_part(data)
    slices, frames = segment_slices(data.episodes, segments)
    output = base.outputs[0]
    LOGGER.info('scoring every model on the %s part: %d frames in %d segment(s)', part,
                sum(len(s) for s in slices), len(slices))

    rows = []
    for spec in models:
        for seed in seeds:
            run_name = f'{spec.name}-s{seed}'
            config = spec.config(base, seed)
            policy, metadata, train_seconds, epochs = _train_or_load(
                spec, config, data, out_dir / f'{run_name}.lcm', reuse, sources, progress)
            options = EvaluationOptions(perturbations=tuple(perturbations), plots=plots,
                                        seed=seed, info={'scored_part': part})
            started = time.perf_counter()
            metrics = run_evaluation(policy, slices, out_dir / run_name, metadata, options)
            LOGGER.info('%s evaluated in %.0f s', run_name, time.perf_counter() - started)
            row = _row(spec, seed, policy, metadata, train_seconds, epochs, metrics, output)
            row['scored_part'] = part
            row['scored_frames'] = int(sum(len(s) for s in slices))
            rows.append(row)
            write_tables(out_dir, rows, output, perturbations)
    return rows


def mean_rows(rows: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    """Average the numeric columns of rows with the same model over their seeds."""
    merged = []
    for model in dict.fromkeys(row['model'] for row in rows):
        group = [row for row in rows if row['model'] == model]
        mean = {'model': model, 'family': group[0]['family'], 'seed': 'mean',
                'seeds': len(group)}
        for key, value in group[0].items():
            if key in mean or not isinstance(value, (int, float)):
                continue
            values = [row.get(key) for row in group if isinstance(row.get(key), (int, float))]
            values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
            mean[key] = float(np.mean(values)) if values else math.nan
            if key in ('mae', 'pearson') and len(values) > 1:
                mean[f'{key}_std'] = float(np.std(values))
        merged.append(mean)
    return merged


# Scores compared seed by seed, and whether a lower value is the better one.
PAIRED_SCORES = (('mae', True), ('rmse', True), ('pearson', False))


def paired_differences(rows: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    """Compare every model with the first model of ``rows``, seed by seed.

    Runs with the same seed share the split and the pretrained encoder, so the difference
    of a score within a seed leaves out much of what varies between seeds. For each
    other model and each score of PAIRED_SCORES the result gives the seeds both models
    ran and the mean of (model - first) over them. It also gives the standard error of
    that mean (None with one seed) and the number of seeds in which the model scored
    better. Seeds where either score is missing or not finite are left out of that score.
    """
    models = list(dict.fromkeys(row['model'] for row in rows))
    if len(models) < 2:
        return []
    reference = models[0]

    def by_seed(model: str, key: str) -> Dict[object, float]:
        values = {}
        for row in rows:
            value = row.get(key)
            if (row['model'] == model and isinstance(value, (int, float))
                    and math.isfinite(float(value))):
                values[row.get('seed')] = float(value)
        return values

    results = []
    for model in models[1:]:
        entry: Dict[str, object] = {'model': model, 'reference': reference}
        for key, lower_is_better in PAIRED_SCORES:
            ours, theirs = by_seed(model, key), by_seed(reference, key)
            seeds = [seed for seed in ours if seed in theirs]
            differences = np.array([ours[seed] - theirs[seed] for seed in seeds])
            better = int(np.sum(differences < 0 if lower_is_better else differences > 0))
            entry[key] = {
                'seeds': len(seeds),
                'difference': float(differences.mean()) if len(seeds) else None,
                'standard_error': (float(differences.std(ddof=1) / math.sqrt(len(seeds)))
                                   if len(seeds) > 1 else None),
                'better_in': better}
        results.append(entry)
    return results


def differences_table(differences: Sequence[Dict[str, object]]) -> str:
    """Return a Markdown table of ``paired_differences``: mean ± standard error and seeds won."""
    header = ['model', 'seeds']
    for key, lower_is_better in PAIRED_SCORES:
        label = 'Pearson r' if key == 'pearson' else key.upper()
        header += [f'{label} difference', 'lower in' if lower_is_better else 'higher in']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for entry in differences:
        cells = [str(entry['model']), str(max(entry[key]['seeds'] for key, _ in PAIRED_SCORES))]
        for key, _ in PAIRED_SCORES:
            score = entry[key]
            if score['difference'] is None:
                cells += ['-', '-']
                continue
            text = f'{score["difference"]:+.3f}'
            if score['standard_error'] is not None:
                text += f' ± {score["standard_error"]:.3f}'
            cells += [text, f'{score["better_in"]} of {score["seeds"]}']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def _cell(value, digits: int = 3) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        if not math.isfinite(value):
            return '-'
        return f'{value:.{digits}f}'
    if isinstance(value, int):
        return f'{value:,}'
    return str(value)


def _clear_lag(metrics: Dict[str, object]) -> float:
    """Return the lag in seconds, or NaN when the best shift is at the search limit."""
    frames = metrics.get('lag_frames')
    if not isinstance(frames, (int, float)) or abs(frames) >= MAX_LAG_FRAMES:
        return math.nan
    return metrics.get('lag_s', math.nan)


def _milliseconds(seconds) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return '-'
    return f'{1000.0 * seconds:.0f}'


def _count(value) -> str:
    # Counts stay whole numbers with separators, also as a mean over seeds.
    if isinstance(value, float) and math.isfinite(value):
        return f'{round(value):,}'
    return _cell(value)


def markdown_table(rows: Sequence[Dict[str, object]], output: str,
                   perturbations: Sequence[str]) -> str:
    """Return a Markdown table: parameters, accuracy and robustness, one row per entry."""
    noise = [name for name in perturbations if name.startswith('noise')]
    header = ['model', 'seed', 'encoder params', 'recurrent params', f'{output} MAE',
              'MAE / constant', 'RMSE', 'Pearson r', 'change / frame', 'lag ms',
              'r fast'] + [
              f'r @ {n}' for n in noise] + [
              'train min', 'pretrain steps', 'epochs (best)', 'eval x real time']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        mae = _cell(row.get('mae'))
        if 'mae_std' in row:
            mae += f' ± {row["mae_std"]:.3f}'
        pearson = _cell(row.get('pearson'))
        if 'pearson_std' in row:
            pearson += f' ± {row["pearson_std"]:.3f}'
        epochs = '-'
        if isinstance(row.get('epochs'), int):
            epochs = f'{row["epochs"]} ({row.get("best_epoch")})'
        cells = [row['model'], str(row.get('seed')), _count(row.get('encoder_parameters')),
                 _count(row.get('recurrent_parameters')), mae, _cell(row.get('mae_ratio'), 2),
                 _cell(row.get('rmse')), pearson, _cell(row.get('mean_abs_change')),
                 _milliseconds(row.get('lag_s')), _cell(row.get('pearson_fast'))]
        cells += [_cell(row.get(f'{name} pearson')) for name in noise]
        cells += [_cell(row.get('train_minutes'), 1), _count(row.get('pretrain_steps')), epochs,
                  _cell(row.get('realtime_factor'), 0)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_tables(out_dir: Path, rows: Sequence[Dict[str, object]], output: str,
                 perturbations: Sequence[str]) -> None:
    """Write ``compare.json`` (every run and the means) and ``compare.md``."""
    means = mean_rows(rows)

    def ready(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    differences = paired_differences(rows)
    payload = {'runs': [{k: ready(v) for k, v in row.items()} for row in rows],
               'means': [{k: ready(v) for k, v in row.items()} for row in means],
               'differences': differences}
    (out_dir / 'compare.json').write_text(json.dumps(payload, indent=2) + '\n')
    part = rows[0].get('scored_part', 'validation') if rows else 'validation'
    frames = rows[0].get('scored_frames', 0) if rows else 0
    first = rows[0] if rows else {}
    text = (f'# Model comparison\n\nScored on the {part} part ({frames} frames); '
            f'constant predictor MAE {_cell(first.get("baseline_mae"))}. "change / frame" '
            'is the mean absolute change of the command between consecutive frames; the '
            f'human\'s is {_cell(first.get("target_mean_abs_change"))}. "lag ms" is how '
            'late the model follows the human (the shift of its commands that correlates '
            'best; "-" when that shift is at the limit of the '
            f'±{MAX_LAG_FRAMES}-frame search, so there is no clear lag); "r fast" is '
            'Pearson r of the changes faster than about a second. A "-" marks a value '
            'that is not defined, such as Pearson r of a model whose output does not '
            'change.\n\n## Every run\n\n'
            + markdown_table(rows, output, perturbations))
    if any(row.get('seeds', 1) > 1 for row in means) or len(means) < len(rows):
        text += '\n## Mean over seeds\n\n' + markdown_table(means, output, perturbations)
    if any(score['seeds'] > 1 for entry in differences for score in
           (entry[key] for key, _ in PAIRED_SCORES)):
        text += (f'\n## Against {differences[0]["reference"]}, seed by seed\n\nEach '
                 f'difference is a model\'s score minus {differences[0]["reference"]}\'s '
                 'with the same seed, which shares the split and the pretrained encoder, '
                 'as the mean over the seeds ± its standard error. A difference smaller '
                 'than about twice its standard error is within what changes from seed to '
                 'seed; more seeds narrow it. "lower in" and "higher in" count the seeds in '
                 'which the model did better.\n\n' + differences_table(differences))
    (out_dir / 'compare.md').write_text(text)
