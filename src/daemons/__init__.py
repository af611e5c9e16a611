"""The daemons that move series and jobs through their states (post, poll, deliver)."""
