"""What the page shows: the controls, the live plots, the sweep view, the server's file list,
and the escaping of text from visitors."""
