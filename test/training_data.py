"""A small real training set for tests: two short episodes cut from the donkeycar tub."""

from pathlib import Path

from liquid_control.data.episodes import EncodedImage, EpisodeWriter, FrameLabels, find_episodes
from liquid_control.data.sources import load_episodes

TUB = 'donkey_indoor_train_tub'

# Frames of the tub's second episode (the car drives the taped lane there); the
# ranges are far apart so the two episodes differ.
RANGES = ((200, 248), (900, 948))

# Tiny settings so a test epoch takes about a second on one core.
TINY_SETTINGS = {
    'preprocessing': {'crop_top': 0.4, 'height': 24, 'width': 48},
    'sequence_length': 8,
    'stride': 2,
    'warmup_frames': 2,
    'batch_size': 8,
    'validation_fraction': 0.25,
    'epochs': 1,
    'patience': 50,
    'threads': 1,
}


def write_subset(shared_data: Path, out_dir: Path) -> Path:
    """Import the tub into ``out_dir/cache`` and write the two short episodes to
    ``out_dir/episodes``; return the dataset folder."""
    imported = load_episodes(shared_data / TUB, cache_dir=out_dir / 'cache')
    source = max(imported, key=len)
    dataset = out_dir / 'episodes'
    for start, stop in RANGES:
        writer = EpisodeWriter(dataset, {'source': {'kind': 'test subset'},
                                         'commands': source.metadata.get('commands', {})},
                               fsync_interval_s=None)
        for index in range(start, stop):
            data = source.frame_path(index).read_bytes()
            labels = FrameLabels(linear_x=float(source.command('linear_x')[index]),
                                 angular_z=float(source.command('angular_z')[index]),
                                 command_status='ok', command_age_s=0.0)
            writer.add(int(source.stamp_ns[index]), EncodedImage(data, 'jpg'), labels)
        writer.close('test subset')
    assert len(find_episodes(dataset)) == len(RANGES)
    return dataset
