"""Jupyter front end: the %tuner magics, the session, the widget panel."""
