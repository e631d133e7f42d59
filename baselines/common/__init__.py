"""Networks shared by several methods."""
