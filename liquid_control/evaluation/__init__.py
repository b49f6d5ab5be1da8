"""Offline evaluation of policies on episodes and bags (torch and numpy, no rclpy)."""
