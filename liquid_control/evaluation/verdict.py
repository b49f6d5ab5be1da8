"""Warnings about an evaluation's results: signs that a policy does not drive usefully.

Each warning is a dict with ``output`` (the output's name, or None for the whole run),
``check`` (the name of the check), ``part`` and ``message``. ``part`` is 'evaluated' for a
check on all scored frames, or the part of the training data it concerns, such as 'test'.
The message names the numbers and what to do. ``metrics.json`` lists the warnings under
``warnings``, and the report and the log of ``evaluate`` show them.
"""

import math
from typing import Dict, List, Mapping, Optional, Sequence

# MAE at or above this fraction of the constant predictor's MAE: the policy is hardly more
# accurate than sending the training mean on every frame.
NEAR_BASELINE_RATIO = 0.95
# Pearson r from this on: a policy near the baseline's MAE still follows the human, and
# its error is one of scale or offset, which the near_baseline message then names.
FOLLOWS_PEARSON = 0.5
# Pearson r below this: the policy tends to command the opposite of the human, as a
# command with a flipped sign would.
REVERSED_PEARSON = -0.3
# Standard deviation of the policy's commands below this fraction of the human's: the
# output hardly moves, whatever the camera shows.
FLAT_SPREAD_RATIO = 0.1

# The policy's largest command to one side below this fraction of the human's largest to
# that side: it falls short in the hardest manoeuvres, such as full-lock turns.
SHORT_RANGE_RATIO = 0.7

# The import option that scales each command, for the advice on a reversed sign.
SCALE_OPTIONS = {'angular_z': '--angular-scale', 'linear_x': '--linear-scale'}


def _warning(output: Optional[str], check: str, part: str, message: str) -> Dict[str, object]:
    return {'output': output, 'check': check, 'part': part, 'message': message}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def output_warnings(name: str, values: Mapping, part: str = 'evaluated'
                    ) -> List[Dict[str, object]]:
    """Check one output's metrics against the thresholds above and return the warnings.

    ``values`` has the keys of ``regression_metrics`` and ``spread_metrics``. ``part``
    names the frames they were measured on and appears in the message unless it is
    'evaluated'. A metric that is NaN or missing skips its check.
    """
    where = '' if part == 'evaluated' else f' on the {part} part'
    warnings = []
    error, baseline = values.get('mae'), values.get('baseline_mae')
    if _finite(error) and _finite(baseline) and baseline > 0:
        ratio = error / baseline
        if ratio >= NEAR_BASELINE_RATIO:
            # Compared as printed, so that a ratio shown as 1.000 never reads "worse".
            rounded_ratio = round(ratio, 3)
            if rounded_ratio > 1.0:
                verdict = 'worse than'
            elif rounded_ratio == 1.0:
                verdict = 'no better than'
            else:
                verdict = 'hardly better than'
            message = (f'{name}{where}: MAE {error:.4g} is {ratio:.3f} of the constant '
                       f"predictor's {baseline:.4g} (warning from {NEAR_BASELINE_RATIO}), so "
                       f'the policy is {verdict} sending the training mean on every frame.')
            pearson, spread = values.get('pearson'), values.get('prediction_std')
            human_spread = values.get('target_std')
            if _finite(pearson) and pearson >= FOLLOWS_PEARSON:
                message += (f' Its Pearson r is {pearson:.3f}, so it does follow the '
                            "human's changes: its commands are too large or offset")
                if _finite(spread) and _finite(human_spread):
                    message += (f' (standard deviation {spread:.3g} against the human\'s '
                                f'{human_spread:.3g})')
                message += '.'
            warnings.append(_warning(name, 'near_baseline', part, message))

    pearson = values.get('pearson')
    if _finite(pearson) and pearson < REVERSED_PEARSON:
        option = SCALE_OPTIONS.get(name)
        advice = (f'Check {option} of the import and the sign convention of the recording.'
                  if option else 'Check the sign convention of the recording.')
        warnings.append(_warning(name, 'reversed_sign', part, (
            f'{name}{where}: Pearson r is {pearson:.3f} (below {REVERSED_PEARSON}), so the '
            f'sign of {name} looks reversed. {advice}')))

    spread, human_spread = values.get('prediction_std'), values.get('target_std')
    if _finite(spread) and _finite(human_spread) and human_spread > 0:
        ratio = spread / human_spread
        if ratio < FLAT_SPREAD_RATIO:
            change = values.get('mean_abs_change')
            moved = f' and a change per frame of {change:.3g}' if _finite(change) else ''
            warnings.append(_warning(name, 'flat_output', part, (
                f"{name}{where}: the policy's commands hardly vary, with a standard "
                f"deviation of {spread:.3g} against the human's {human_spread:.3g} (ratio "
                f'{ratio:.3f}, warning below {FLAT_SPREAD_RATIO}){moved}, so it drives like '
                'a constant.')))
    warnings += _short_range_warnings(name, values, where, part)
    return warnings


def _short_range_warnings(name: str, values: Mapping, where: str, part: str
                          ) -> List[Dict[str, object]]:
    """Warn for each side where the policy's commands stop well short of the human's."""
    warnings = []
    beyond = values.get('frames_beyond_prediction_range')
    for side, policy_key, human_key in (('positive', 'prediction_max', 'target_max'),
                                        ('negative', 'prediction_min', 'target_min')):
        policy, human = values.get(policy_key), values.get(human_key)
        if not (_finite(policy) and _finite(human)):
            continue
        sign = 1.0 if side == 'positive' else -1.0
        if sign * human <= 0 or sign * policy >= SHORT_RANGE_RATIO * sign * human:
            continue
        count = f' ({beyond} frames beyond its range in all)' if _finite(beyond) else ''
        warnings.append(_warning(name, 'short_range', part, (
            f'{name}{where}: the policy never commands past {policy:+.3g} while the human '
            f'reached {human:+.3g}{count}, below {SHORT_RANGE_RATIO} of the human\'s '
            f'largest {side} command, so it falls short in the hardest manoeuvres to that '
            'side. The error by command size shows how much.')))
    return warnings


def recorded_units(episodes: Sequence, name: str) -> List[str]:
    """Return the distinct units that the episodes' metadata give command ``name``.

    Episodes without a recorded unit for it are left out.
    """
    units = []
    for episode in episodes:
        metadata = getattr(episode, 'metadata', None) or {}
        commands = metadata.get('commands') if isinstance(metadata, Mapping) else None
        entry = commands.get(name) if isinstance(commands, Mapping) else None
        unit = entry.get('unit') if isinstance(entry, Mapping) else None
        if unit and str(unit) not in units:
            units.append(str(unit))
    return units


def unit_warnings(output_names: Sequence[str], output_units: Sequence[str],
                  episodes: Sequence) -> List[Dict[str, object]]:
    """Return a warning for each output whose model unit differs from the recording's."""
    warnings = []
    for name, unit in zip(output_names, output_units):
        others = [recorded for recorded in recorded_units(episodes, name) if recorded != unit]
        if not others or not unit:
            continue
        option = SCALE_OPTIONS.get(name)
        advice = (f' If the scales differ, import the recording with {option} to match '
                  f'them; if only the label is wrong, give the unit with '
                  f"{option.replace('scale', 'unit')} '{unit}'." if option else '')
        listed = ' and '.join(f'"{other}"' for other in others)
        warnings.append(_warning(name, 'unit_mismatch', 'evaluated', (
            f'{name}: the model outputs "{unit}", but the evaluated episodes label this '
            f'command {listed}. The metrics compare the numbers as they are.{advice}')))
    return warnings


def training_frames_warning(part_frames: Mapping[str, int], total: int,
                            held_out: Optional[str]) -> Dict[str, object]:
    """Return the warning that ``part_frames['train']`` of ``total`` frames are training frames.

    ``held_out`` names the held-out part to evaluate alone, or None when there is none.
    """
    trained = int(part_frames.get('train', 0))
    share = 100.0 * trained / total if total else math.nan
    advice = (f'The per-part metrics show the {held_out} part alone, and --part {held_out} '
              'evaluates only it.' if held_out else
              'The model holds out no frame of this data, so evaluate another recording.')
    return _warning(None, 'training_frames', 'evaluated', (
        f'{trained} of the {total} evaluated frames ({share:.0f} %) are in the part of the '
        'data that this model was trained on, so the metrics over all frames overstate how '
        f'it drives on new data. '
        f'{advice}'))
