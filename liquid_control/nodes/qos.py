"""QoS profiles by role: sensor streams, commands, diagnostics."""

from rclpy.qos import (HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)


def sensor_qos(reliability: str = 'best_effort') -> QoSProfile:
    """Return sensor-data QoS (keep last 5, volatile) with the given reliability.

    ``reliability`` is 'best_effort' (the sensor-data default, which also receives from
    reliable publishers) or 'reliable', which retransmits lost samples but only matches
    reliable publishers.
    """
    profile = QoSProfile(
        history=qos_profile_sensor_data.history,
        depth=qos_profile_sensor_data.depth,
        reliability=qos_profile_sensor_data.reliability,
        durability=qos_profile_sensor_data.durability)
    if reliability == 'reliable':
        profile.reliability = ReliabilityPolicy.RELIABLE
    elif reliability != 'best_effort':
        raise ValueError(f"reliability must be 'best_effort' or 'reliable', got {reliability!r}")
    return profile


def command_qos() -> QoSProfile:
    """Return reliable keep-last-10 QoS, the ROS default that cmd_vel consumers expect."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                      reliability=ReliabilityPolicy.RELIABLE)
