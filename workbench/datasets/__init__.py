"""Example datasets, loaded from files on local disk (nothing is downloaded at training time)."""
