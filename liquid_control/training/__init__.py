"""Training of policies on recorded episodes (torch and numpy, no rclpy)."""
