"""Donkeycar tub import: the real tub, its rosbag2 twin, and damaged tubs."""

import json
import os
import shutil
import threading

import numpy as np
import pytest

from liquid_control.data.episodes import EncodedImage, FrameLabels, find_episodes
from liquid_control.data.images import encode_jpeg
from liquid_control.data.importing import EpisodeSequence
from liquid_control.data.sources import import_source, load_episodes
from liquid_control.data.sync import LabelOptions
from liquid_control.data.tub import read_tub
from liquid_control.errors import DataError

from conftest import SHARED_DATA

TUB = SHARED_DATA / 'donkey_indoor_train_tub'
BAG = SHARED_DATA / 'donkey_indoor_train_bag'
# Records after which the tub has a long gap (59 s and 4.6 s).
GAP_AFTER = (406, 2128)


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
    """Import the real tub and bag once for the module."""
    if not TUB.is_dir() or not BAG.is_dir():
        pytest.skip(f'sample data not found under {SHARED_DATA}; it is kept outside the '
                    'repository and needed by this test')
    out = tmp_path_factory.mktemp('imported')
    return {'tub': import_source(TUB, out / 'tub'), 'bag': import_source(BAG, out / 'bag')}


def _catalog_records(tub):
    records = []
    for catalog in sorted(tub.glob('catalog_*.catalog')):
        records += [json.loads(line) for line in catalog.read_text().splitlines() if line]
    return sorted(records, key=lambda r: r['_index'])


def test_tub_splits_at_gaps(imported):
    episodes = find_episodes(imported['tub'][0].parent)
    assert [len(e) for e in episodes] == [407, 1722, 1371]
    assert sum(len(e) for e in episodes) == 3500


def test_tub_commands_follow_rep103(imported):
    records = _catalog_records(TUB)
    episodes = find_episodes(imported['tub'][0].parent)
    angular = np.concatenate([e.command('angular_z') for e in episodes])
    linear = np.concatenate([e.command('linear_x') for e in episodes])
    angle = np.array([r['user/angle'] for r in records], dtype=np.float32)
    throttle = np.array([r['user/throttle'] for r in records], dtype=np.float32)
    assert np.array_equal(angular, -angle)
    assert np.array_equal(linear, throttle)
    assert all(e.valid.all() for e in episodes)
    assert not any(e.has_imu for e in episodes)


def test_tub_metadata_records_mapping(imported):
    metadata = find_episodes(imported['tub'][0])[0].metadata
    assert metadata['source']['kind'] == 'donkeycar_tub'
    assert metadata['commands']['angular_z']['source'] == 'user/angle'
    assert metadata['commands']['angular_z']['scale'] == -1.0
    assert metadata['commands']['linear_x']['scale'] == 1.0
    assert metadata['finished'] is True


def test_tub_and_bag_import_same_frames(imported):
    tub_episodes = find_episodes(imported['tub'][0].parent)
    bag_episodes = find_episodes(imported['bag'][0].parent)
    assert [len(e) for e in bag_episodes] == [len(e) for e in tub_episodes]
    for tub_episode, bag_episode in zip(tub_episodes, bag_episodes):
        assert np.array_equal(tub_episode.stamp_ns, bag_episode.stamp_ns)
        for i in (0, len(tub_episode) // 2, len(tub_episode) - 1):
            assert tub_episode.frame_path(i).read_bytes() == bag_episode.frame_path(i).read_bytes()


def test_tub_and_bag_commands_match(imported):
    tub_episodes = find_episodes(imported['tub'][0].parent)
    bag_episodes = find_episodes(imported['bag'][0].parent)
    for tub_episode, bag_episode in zip(tub_episodes, bag_episodes):
        assert bag_episode.valid.all()
        for name in ('linear_x', 'angular_z'):
            assert np.array_equal(tub_episode.command(name), bag_episode.command(name))
        assert np.allclose(bag_episode.command_age_s, -0.001, atol=1e-6)


def test_tub_windows_never_cross_gaps(imported):
    for episode in find_episodes(imported['tub'][0].parent):
        for window in episode.windows(length=16, stride=8):
            assert np.diff(episode.timestamps[window]).max() < 0.2


def test_load_episodes_caches_import(tmp_path):
    if not TUB.is_dir():
        pytest.skip(f'sample tub not found at {TUB}')
    first = load_episodes(TUB, cache_dir=tmp_path)
    marker = first[0].folder.parent / 'import.json'
    mtime = marker.stat().st_mtime_ns
    second = load_episodes(TUB, cache_dir=tmp_path)
    assert [e.folder for e in second] == [e.folder for e in first]
    assert marker.stat().st_mtime_ns == mtime
    assert len(list(tmp_path.iterdir())) == 1


def test_load_episodes_rejects_options_for_episodes(tmp_path, imported):
    with pytest.raises(DataError, match='already labelled'):
        load_episodes(imported['tub'][0], angular_scale=1.0)


# ------------------------------------------------------------ small synthetic tubs

def _make_tub(folder, records=6, deleted=(), imu=False):
    """Write a tub v2 with a few real frames of the sample tub."""
    if not TUB.is_dir():
        pytest.skip(f'sample tub not found at {TUB}')
    (folder / 'images').mkdir(parents=True)
    inputs = ['cam/image_array', 'user/angle', 'user/throttle', 'user/mode']
    types = ['image_array', 'float', 'float', 'str']
    if imu:
        keys = ['imu/acl_x', 'imu/acl_y', 'imu/acl_z', 'imu/gyr_x', 'imu/gyr_y', 'imu/gyr_z']
        inputs += keys
        types += ['float'] * 6
    lines = []
    for i in range(records):
        name = f'{i}_cam_image_array_.jpg'
        shutil.copyfile(TUB / 'images' / name, folder / 'images' / name)
        entry = {'_index': i, '_session_id': 's', '_timestamp_ms': 1000 + 50 * i,
                 'cam/image_array': name, 'user/angle': 0.1 * i, 'user/throttle': 0.5,
                 'user/mode': 'user'}
        if imu:
            entry.update({'imu/acl_x': 1.0, 'imu/acl_y': 2.0, 'imu/acl_z': 9.8,
                          'imu/gyr_x': 0.0, 'imu/gyr_y': 0.0, 'imu/gyr_z': 90.0})
        lines.append(json.dumps(entry))
    (folder / 'catalog_0.catalog').write_text('\n'.join(lines) + '\n')
    manifest = [inputs, types, {}, {'created_at': 0},
                {'paths': ['catalog_0.catalog'], 'current_index': records, 'max_len': 1000,
                 'deleted_indexes': list(deleted)}]
    (folder / 'manifest.json').write_text('\n'.join(json.dumps(x) for x in manifest) + '\n')
    return folder


def test_tub_deleted_records_left_out(tmp_path):
    tub = _make_tub(tmp_path / 'tub', deleted=[1, 4])
    assert [r.index for r in read_tub(tub)] == [0, 2, 3, 5]
    episode = find_episodes(import_source(tub, tmp_path / 'out')[0])[0]
    assert len(episode) == 4
    assert np.allclose(episode.command('angular_z'), [0.0, -0.2, -0.3, -0.5])


def test_tub_imu_fields_imported(tmp_path):
    tub = _make_tub(tmp_path / 'tub', imu=True)
    episode = find_episodes(import_source(tub, tmp_path / 'out')[0])[0]
    assert episode.has_imu
    assert episode.imu_status[0] == 'recorded'
    assert episode.imu[0, 2] == pytest.approx(np.pi / 2)
    assert episode.imu[0, 3:].tolist() == pytest.approx([1.0, 2.0, 9.8])


def test_tub_angular_scale_option(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    options = LabelOptions(angular_scale=2.0)
    episode = find_episodes(import_source(tub, tmp_path / 'out', options)[0])[0]
    assert episode.command('angular_z')[1] == pytest.approx(0.2)
    assert episode.metadata['commands']['angular_z']['scale'] == 2.0


def test_tub_missing_image_error(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    (tub / 'images' / '3_cam_image_array_.jpg').unlink()
    with pytest.raises(DataError, match='3_cam_image_array_.jpg'):
        import_source(tub, tmp_path / 'out')
    assert not (tmp_path / 'out').exists() or list((tmp_path / 'out').iterdir()) == []


def test_tub_cut_last_line_skipped(tmp_path, caplog):
    tub = _make_tub(tmp_path / 'tub')
    catalog = tub / 'catalog_0.catalog'
    catalog.write_text(catalog.read_text()[:-40])
    episode = find_episodes(import_source(tub, tmp_path / 'out')[0])[0]
    assert len(episode) == 5
    assert 'last line 6 is cut off' in caplog.text


def test_tub_cut_middle_line_error(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    catalog = tub / 'catalog_0.catalog'
    lines = catalog.read_text().splitlines()
    lines[2] = lines[2][:30]
    catalog.write_text('\n'.join(lines) + '\n')
    with pytest.raises(DataError, match='line 3 is not valid JSON'):
        import_source(tub, tmp_path / 'out')
    assert not (tmp_path / 'out').exists() or list((tmp_path / 'out').iterdir()) == []


def test_tub_non_utf8_catalog_error(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    with open(tub / 'catalog_0.catalog', 'ab') as stream:
        stream.write(b'\xff\xfe\n')
    with pytest.raises(DataError, match='catalog_0.catalog'):
        import_source(tub, tmp_path / 'out')
    assert not (tmp_path / 'out').exists() or list((tmp_path / 'out').iterdir()) == []


def test_tub_truncated_manifest_error(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    manifest = tub / 'manifest.json'
    manifest.write_text('\n'.join(manifest.read_text().splitlines()[:3]))
    with pytest.raises(DataError, match='manifest.json has 3 lines'):
        import_source(tub, tmp_path / 'out')


def test_sequence_error_removes_finished_episodes(tmp_path):
    image = EncodedImage(encode_jpeg(np.zeros((8, 8, 3), np.uint8)), 'jpg')
    labels = FrameLabels(linear_x=0.5, angular_z=0.0, command_status='ok', command_age_s=0.0)
    with pytest.raises(DataError, match='stop here'):
        with EpisodeSequence(tmp_path / 'out', {}, split_gap_s=1.0) as sequence:
            sequence.add(10**9, image, labels)
            sequence.add(5 * 10**9, image, labels)
            assert len(sequence.folders) == 1
            raise DataError('stop here')
    assert list((tmp_path / 'out').iterdir()) == []


# ------------------------------------------------------------- damaged tub records

def _edit_record(tub, number, **values):
    """Change keys of record ``number`` in catalog_0.catalog (None deletes a key)."""
    catalog = tub / 'catalog_0.catalog'
    records = [json.loads(line) for line in catalog.read_text().splitlines()]
    for key, value in values.items():
        records[number][key.replace('__', '/')] = value
    catalog.write_text('\n'.join(json.dumps(r) for r in records) + '\n')


def _edit_manifest_line(tub, line, change):
    manifest = tub / 'manifest.json'
    lines = manifest.read_text().splitlines()
    lines[line] = json.dumps(change(json.loads(lines[line])))
    manifest.write_text('\n'.join(lines) + '\n')


def _import_episodes(tub, out, options=None):
    return [e for folder in import_source(tub, out, options) for e in find_episodes(folder)]


@pytest.mark.parametrize('line,change', [
    (4, lambda catalogs: dict(catalogs, deleted_indexes=5)),
    (4, lambda catalogs: dict(catalogs, deleted_indexes=['1'])),
    (4, lambda catalogs: 42),
    (4, lambda catalogs: 'paths'),
    (4, lambda catalogs: dict(catalogs, paths='catalog_0.catalog')),
    (0, lambda inputs: [1, 2, 3]),
], ids=['deleted_int', 'deleted_strings', 'catalogs_number', 'catalogs_string',
        'paths_string', 'inputs_ints'])
def test_tub_malformed_manifest_error(tmp_path, line, change):
    tub = _make_tub(tmp_path / 'tub')
    _edit_manifest_line(tub, line, change)
    with pytest.raises(DataError, match='manifest.json is not a tub v2 manifest'):
        read_tub(tub)


def test_tub_catalog_outside_tub_error(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    outside = tmp_path / 'elsewhere.catalog'
    shutil.copyfile(tub / 'catalog_0.catalog', outside)
    _edit_manifest_line(tub, 4, lambda catalogs: dict(catalogs, paths=[str(outside)]))
    with pytest.raises(DataError, match='is outside the tub folder'):
        read_tub(tub)


def test_tub_catalog_fifo_error(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    catalog = tub / 'catalog_0.catalog'
    catalog.unlink()
    os.mkfifo(catalog)
    # A writer that feeds the FIFO if the importer opens it, so a failure cannot hang.
    writer = threading.Thread(target=_feed_fifo, args=(catalog,), daemon=True)
    writer.start()
    try:
        with pytest.raises(DataError, match='catalog_0.catalog.*is not a regular file'):
            read_tub(tub)
    finally:
        descriptor = os.open(catalog, os.O_RDONLY | os.O_NONBLOCK)
        writer.join(timeout=10)
        os.close(descriptor)


def _feed_fifo(path):
    try:
        with open(path, 'w') as stream:
            stream.write('not a catalog\n')
    except OSError:
        pass


def test_tub_image_outside_images_error(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    _edit_record(tub, 2, cam__image_array='../../tub/images/3_cam_image_array_.jpg')
    with pytest.raises(DataError, match='line 3 is invalid: cam/image_array'):
        read_tub(tub)


def test_tub_duplicate_index_error(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    _edit_record(tub, 3, _index=2)
    with pytest.raises(DataError, match='line 4: _index 2 is also at catalog_0.catalog line 3'):
        read_tub(tub)


@pytest.mark.parametrize('stamp', [0, -5, 10**20, True, 'yesterday', None],
                         ids=['zero', 'negative', 'beyond_int64', 'bool', 'string', 'null'])
def test_tub_impossible_timestamp_error(tmp_path, stamp):
    tub = _make_tub(tmp_path / 'tub')
    _edit_record(tub, 3, _timestamp_ms=stamp)
    with pytest.raises(DataError, match='catalog_0.catalog line 4 is invalid: _timestamp_ms'):
        import_source(tub, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('angle', [True, '0.5', [0.1]], ids=['bool', 'string', 'list'])
def test_tub_angle_not_number_error(tmp_path, angle):
    tub = _make_tub(tmp_path / 'tub')
    _edit_record(tub, 3, user__angle=angle)
    with pytest.raises(DataError, match='line 4 is invalid: user/angle .* is not a number'):
        read_tub(tub)


def test_tub_null_angle_is_a_missing_command(tmp_path, caplog):
    tub = _make_tub(tmp_path / 'tub')
    _edit_record(tub, 3, user__angle=None)
    episode = _import_episodes(tub, tmp_path / 'out')[0]
    assert episode.valid.tolist() == [True, True, True, False, True, True]
    assert 'record 3 (catalog_0.catalog line 4)' in caplog.text


def test_tub_future_stamp_costs_one_record(tmp_path, caplog):
    tub = _make_tub(tmp_path / 'tub')
    _edit_record(tub, 3, _timestamp_ms=1000 + 50 * 3 + 3_600_000)
    episodes = _import_episodes(tub, tmp_path / 'out')
    assert [len(e) for e in episodes] == [5]
    assert episodes[0].command('angular_z').tolist() == pytest.approx(
        [0.0, -0.1, -0.2, -0.4, -0.5])
    assert '1 record(s) left out because their _timestamp_ms is out of order' in caplog.text
    assert 'record 3 (catalog_0.catalog line 4)' in caplog.text


def test_tub_swapped_stamps_keep_record_order(tmp_path, caplog):
    tub = _make_tub(tmp_path / 'tub')
    _edit_record(tub, 2, _timestamp_ms=1000 + 50 * 3)
    _edit_record(tub, 3, _timestamp_ms=1000 + 50 * 2)
    episode = _import_episodes(tub, tmp_path / 'out')[0]
    # The images stay with their records: record 3 is left out, not moved before 2.
    assert episode.command('angular_z').tolist() == pytest.approx(
        [0.0, -0.1, -0.2, -0.4, -0.5])
    assert 'record 3 (catalog_0.catalog line 4)' in caplog.text


def test_tub_mostly_out_of_order_error(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    for number in range(6):
        _edit_record(tub, number, _timestamp_ms=1000 - 50 * number)
    with pytest.raises(DataError, match='only 1 of 6 records have stamps that increase'):
        import_source(tub, tmp_path / 'out')


@pytest.mark.parametrize('angle', [float('nan'), float('inf'), 1e39],
                         ids=['nan', 'inf', 'beyond_float32'])
def test_tub_unusable_angle_invalid(tmp_path, caplog, angle):
    tub = _make_tub(tmp_path / 'tub')
    _edit_record(tub, 3, user__angle=angle)
    episode = _import_episodes(tub, tmp_path / 'out')[0]
    assert episode.valid.tolist() == [True, True, True, False, True, True]
    assert '1 record(s) with a command value that is not a finite float32 number' in caplog.text
    assert 'record 3 (catalog_0.catalog line 4)' in caplog.text


def test_tub_unusable_angle_skip_option(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    _edit_record(tub, 3, user__angle=float('nan'))
    episode = _import_episodes(tub, tmp_path / 'out', LabelOptions(invalid_frames='skip'))[0]
    assert len(episode) == 5


def test_tub_angle_out_of_range_warning(tmp_path, caplog):
    tub = _make_tub(tmp_path / 'tub')
    _edit_record(tub, 3, user__angle=5.0)
    episode = _import_episodes(tub, tmp_path / 'out')[0]
    assert episode.command('angular_z')[3] == -5.0
    assert "1 record(s) with user/angle or user/throttle outside donkeycar's -1..1" \
        in caplog.text


def test_tub_unusable_imu_missing(tmp_path, caplog):
    tub = _make_tub(tmp_path / 'tub', imu=True)
    _edit_record(tub, 3, imu__acl_x=1e39)
    episode = _import_episodes(tub, tmp_path / 'out')[0]
    assert episode.imu_status.tolist() == ['recorded'] * 3 + ['missing'] + ['recorded'] * 2
    assert '1 record(s) with an IMU value that is not a finite float32 number' in caplog.text


def _cut_jpeg(data):
    return data[:len(data) // 2]


def _garbage_jpeg(data):
    return data[:3] + bytes(range(256)) + b'\xff\xd9'


@pytest.mark.parametrize('damage,reason', [
    (_cut_jpeg, 'without its end-of-image marker'),
    (_garbage_jpeg, 'cannot decode'),
    (lambda data: b'', 'neither JPEG nor PNG'),
], ids=['cut', 'garbage', 'empty'])
def test_tub_damaged_image_skipped(tmp_path, caplog, damage, reason):
    tub = _make_tub(tmp_path / 'tub')
    image = tub / 'images' / '2_cam_image_array_.jpg'
    image.write_bytes(damage(image.read_bytes()))
    episode = _import_episodes(tub, tmp_path / 'out')[0]
    assert episode.command('angular_z').tolist() == pytest.approx([0.0, -0.1, -0.3, -0.4, -0.5])
    assert 'record 2 (catalog_0.catalog line 3), images/2_cam_image_array_.jpg' in caplog.text
    assert reason in caplog.text


def test_tub_every_image_damaged_error(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    for image in (tub / 'images').iterdir():
        image.write_bytes(_cut_jpeg(image.read_bytes()))
    with pytest.raises(DataError, match='gave no frames: of 6 records in time order, 6 '
                       'record.s. left out because their image is damaged'):
        import_source(tub, tmp_path / 'out')
    assert not (tmp_path / 'out').exists() or list((tmp_path / 'out').iterdir()) == []


def test_cache_key_follows_replaced_image(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    first = load_episodes(tub, cache_dir=tmp_path / 'cache')[0]
    replacement = (TUB / 'images' / '100_cam_image_array_.jpg').read_bytes()
    (tub / 'images' / '2_cam_image_array_.jpg').write_bytes(replacement)
    second = load_episodes(tub, cache_dir=tmp_path / 'cache')[0]
    assert second.folder != first.folder
    assert second.frame_path(2).read_bytes() == replacement


def test_cache_key_follows_deleted_image(tmp_path):
    tub = _make_tub(tmp_path / 'tub')
    load_episodes(tub, cache_dir=tmp_path / 'cache')
    (tub / 'images' / '2_cam_image_array_.jpg').unlink()
    with pytest.raises(DataError, match='lacks 1 image file'):
        load_episodes(tub, cache_dir=tmp_path / 'cache')
