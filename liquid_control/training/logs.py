"""Training logs: a CSV row and TensorBoard scalars per epoch, and a readable summary line."""

import csv
import logging
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

LOGGER = logging.getLogger(__name__)

CSV_FILE = 'log.csv'


class EpochLog:
    """Writes one CSV row and one set of TensorBoard scalars per epoch into ``folder``.

    The CSV gains no duplicate header when a resumed run appends to it. TensorBoard is
    optional: without the ``tensorboard`` package only the CSV is written, with a warning.
    """

    def __init__(self, folder: Path, enabled: bool = True):
        self.folder = Path(folder)
        self.enabled = enabled
        self._writer = None
        self._columns: Optional[list] = None
        if not enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=str(self.folder))
        except ImportError as error:
            LOGGER.warning('TensorBoard event files are off: %s (pip install tensorboard)',
                           error)
        csv_path = self.folder / CSV_FILE
        if csv_path.is_file() and csv_path.stat().st_size > 0:
            with open(csv_path, newline='') as stream:
                self._columns = next(csv.reader(stream), None)

    def write(self, epoch: int, values: Dict[str, float]) -> None:
        """Append the values of one finished epoch (numbered from 1)."""
        if not self.enabled:
            return
        row = {'epoch': epoch, **values}
        csv_path = self.folder / CSV_FILE
        if self._columns is None:
            self._columns = list(row)
            with open(csv_path, 'w', newline='') as stream:
                csv.writer(stream).writerow(self._columns)
        with open(csv_path, 'a', newline='') as stream:
            csv.writer(stream).writerow([_format(row.get(name)) for name in self._columns])
        if self._writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(name, value, epoch)
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _format(value) -> str:
    if value is None:
        return ''
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)


def summary_line(epoch: int, epochs: int, values: Dict[str, float], outputs: Sequence[str],
                 improved: bool) -> str:
    """Return a one-line epoch summary, e.g. ``epoch 3/30 train 0.41 val 0.38 ...``.

    Every output in ``outputs`` with validation metrics gets its MAE, the constant
    predictor's MAE and Pearson r.
    """
    parts = [f'epoch {epoch}/{epochs}', f'train loss {values["train/loss"]:.4f}']
    validation = values.get('val/loss', math.nan)
    parts.append(f'val loss {validation:.4f}' if math.isfinite(validation) else
                 'no validation')
    for output in outputs:
        mae = values.get(f'val/{output}/mae')
        if mae is None:
            continue
        parts.append(f'{output} MAE {mae:.4f} '
                     f'(constant {values.get(f"val/{output}/baseline_mae", math.nan):.4f})')
        parts.append(f'r {values.get(f"val/{output}/pearson", math.nan):.3f}')
    parts.append(f'{values["time/epoch_s"]:.0f} s')
    if improved:
        parts.append('best so far')
    return ', '.join(parts)
