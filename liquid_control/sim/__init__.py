"""CarRacing-v3 closed-loop test bed without ROS: the simulator, the cmd_vel mapping and the
expert driver. The rclpy nodes in ``liquid_control.nodes`` wrap these modules.
"""
