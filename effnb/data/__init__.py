"""Data more than one chapter uses, all offline: text from the standard library, bundled data sets."""
