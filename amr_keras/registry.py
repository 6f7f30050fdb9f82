"""The one shape of the four registries (datasets, mixers, tables, metrics): entries by name, in order.

Each registry is a ``Registry``: a dict from name to entry (a spec with a ``name`` field) that refuses a second
entry of a name unless asked to replace it, and names the known entries when asked for an unknown one.
"""


class Registry(dict):
    """Entries by name, in registration order (built-in ones first).

    Args:
        kind: what an entry is, for messages (``"dataset"``, ``"mixer"``, ...).
        unknown_error: the exception raised for an unknown name (``ValueError``; the tables raise ``ConfigError``,
            which the scripts print as one ``error:`` line).
        describe: ``describe(name, entry) -> str``: how an entry is listed in that message (default: its name).
        separator: between the listed entries.

    Example (``Square`` any object whose ``name`` is ``"square"``)::

        shapes = Registry("shape")
        shapes.register(Square)
        shapes.spec("circle")  # ValueError: Unknown shape 'circle'. Choose one of: square.
    """

    def __init__(self, kind, unknown_error=ValueError, describe=None, separator=", "):
        super().__init__()
        self.kind, self.unknown_error, self.separator = kind, unknown_error, separator
        self.describe = describe or (lambda name, entry: name)

    def register(self, entry, replace=False):
        """Add ``entry`` under ``entry.name``; returns it.

        Raises:
            ValueError: an entry of that name is registered (unless ``replace``).
        """
        if entry.name in self and not replace:
            raise ValueError(f"a {self.kind} named {entry.name!r} is registered already (pass replace=True to "
                             "replace it).")
        self[entry.name] = entry
        return entry

    def names(self):
        """The registered names, in registration order."""
        return tuple(self)

    def spec(self, name):
        """The entry called ``name``; ``unknown_error`` listing the registered ones for an unknown name."""
        if name not in self:
            known = self.separator.join(self.describe(key, entry) for key, entry in self.items())
            raise self.unknown_error(f"Unknown {self.kind} {name!r}. Choose one of: {known}.")
        return self[name]
