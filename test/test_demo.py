"""liquid-control demo: the bundled model drives sim_node through policy_node over DDS."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from liquid_control.errors import LiquidControlError

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO_ROOT / 'models' / 'carracing_ncp.lcm'


def _demo(arguments, env, timeout=240):
    command = [sys.executable, '-m', 'liquid_control.cli.main', 'demo'] + arguments
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def test_bundled_model_is_small():
    assert BUNDLED_MODEL.is_file(), f'{BUNDLED_MODEL} is missing; see models/README.md'
    assert BUNDLED_MODEL.stat().st_size < 1_000_000


def test_demo_drives_and_prints_json(ros_env, tmp_path):
    result = _demo(['--seconds', '4', '--json', '--out', str(tmp_path)], ros_env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report['duration_s'] >= 4.0
    assert report['tiles_visited'] > 5
    assert report['score'] > 0.0
    assert report['commands_received'] > 50
    assert Path(report['video']).is_file()
    with Image.open(report['video']) as video:
        # One frame per 0.1 s of simulated time from the first command on: about 40 for
        # 4 s, fewer only if the best-effort camera topic drops many frames.
        assert video.n_frames >= 30
        width, height = video.size
    assert width > 1.8 * height  # camera and saliency panels side by side
    assert (tmp_path / 'sim_node.log').is_file()
    assert (tmp_path / 'policy_node.log').is_file()


def test_demo_missing_model_is_an_error(ros_env, tmp_path):
    result = _demo(['--model', str(tmp_path / 'absent.lcm'), '--out', str(tmp_path)], ros_env,
                   timeout=60)
    assert result.returncode == 2
    assert 'model not found' in result.stderr
    assert 'absent.lcm' in result.stderr


@pytest.mark.parametrize('arguments', [['--seconds', '0'], ['--noise', '2'],
                                       ['--domain-id', '250'], ['--domain-id', '-1']])
def test_demo_rejects_invalid_options(ros_env, tmp_path, arguments):
    result = _demo(arguments + ['--out', str(tmp_path)], ros_env, timeout=60)
    assert result.returncode == 2
    assert 'invalid' in result.stderr
    assert f'{arguments[0]} {arguments[1]}' in result.stderr


def test_demo_with_frame_gap_model(ros_env, tmp_path):
    # The bundled policy given a frame gap of 2, with zero weights on the six-channel
    # encoder's change channels: it drives as before, through the GIF's frame pairing.
    import dataclasses

    import torch

    from liquid_control.model.checkpoint import load_checkpoint, save_checkpoint
    from liquid_control.model.policy import build_policy

    bundled, metadata = load_checkpoint(BUNDLED_MODEL)
    policy = build_policy(dataclasses.replace(bundled.config, frame_gap=2))
    weights = policy.state_dict()
    for name, value in bundled.state_dict().items():
        if weights[name].shape == value.shape:
            weights[name] = value
        else:
            assert weights[name].shape[1] == 2 * value.shape[1], name
            weights[name] = torch.cat([value, torch.zeros_like(value)], dim=1)
    policy.load_state_dict(weights)
    model = save_checkpoint(tmp_path / 'gap.lcm', policy, metadata)

    result = _demo(['--seconds', '3', '--json', '--model', str(model), '--out',
                    str(tmp_path / 'run')], ros_env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report['tiles_visited'] > 5
    with Image.open(report['video']) as video:
        assert video.n_frames >= 20   # about 30 for 3 s


def _stand_in_sim(tmp_path, code):
    """A process in place of sim_node that publishes nothing, for the start-up checks."""
    from liquid_control.cli.node_process import NodeProcess

    return NodeProcess('sim_node', [sys.executable, '-c', code], {'PYTHONUNBUFFERED': '1'},
                       tmp_path)


def test_demo_start_reports_a_sim_that_exits(tmp_path):
    from liquid_control.cli import demo

    monitor = demo.SimMonitor(domain_id=97, frame_period=0.1)
    sim = _stand_in_sim(tmp_path, 'import sys\nprint("track seed invalid")\nsys.exit(3)\n')
    try:
        with pytest.raises(LiquidControlError) as error:
            demo._wait_for_sim(monitor, sim, need_frame=True)
    finally:
        sim.stop()
        monitor.close()
    assert 'sim_node exited with code 3' in str(error.value)
    assert 'track seed invalid' in str(error.value)


def test_demo_start_times_out_without_status(tmp_path, monkeypatch):
    from liquid_control.cli import demo

    monkeypatch.setattr(demo, 'STARTUP_TIMEOUT_S', 1.0)
    monitor = demo.SimMonitor(domain_id=98, frame_period=0.1)
    sim = _stand_in_sim(tmp_path, 'import time\ntime.sleep(30)\n')
    try:
        with pytest.raises(LiquidControlError, match='timed out after 1 s waiting for the '
                                                     'status of sim_node'):
            demo._wait_for_sim(monitor, sim, need_frame=True)
    finally:
        sim.stop()
        monitor.close()
