"""Reading annotation files: a malformed file (not JSON, empty, a key or column missing, the wrong kind
of value) is an AnnotationError naming the file and what is wrong, not a traceback from deep inside."""

import csv
import json
import pickle


class AnnotationError(ValueError):
    """An annotation file that cannot be used as it is."""


def read_json(path):
    with open(path) as handle:
        text = handle.read()
    if not text.strip():
        raise AnnotationError(f"{path} is empty (expected JSON)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path} is not valid JSON: {error}") from error


def read_json_records(path):
    """A JSON list, or JSON lines (one object a line)."""
    with open(path) as handle:
        text = handle.read().strip()
    if not text:
        raise AnnotationError(f"{path} is empty (expected a JSON list or JSON lines)")
    if text.startswith("["):
        return expect(read_json(path), list, path, "the top level")
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise AnnotationError(f"{path}, line {number}, is not valid JSON: {error}") from error
    return records


def read_csv(path, columns):
    """The rows (dicts) of a CSV file with a header that has every one of `columns`."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise AnnotationError(
                f"{path} has no column {', '.join(repr(c) for c in missing)} "
                f"(its header: {header or 'none, the file is empty'})"
            )
        return list(reader)


def read_pickle(path):
    with open(path, "rb") as handle:
        try:
            return pickle.load(handle)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
            raise AnnotationError(f"{path} is not a readable pickle: {type(error).__name__}: {error}") from error


def expect(value, kind, path, where):
    """value itself, if it is a `kind` (a type or a tuple of types)."""
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise AnnotationError(f"{path}: {where} should be a {names}, got {type(value).__name__}")
    return value


def field(record, key, path, where):
    """record[key] of a JSON object; an AnnotationError naming the file, the record and the key if absent."""
    expect(record, dict, path, where)
    if key not in record:
        raise AnnotationError(f"{path}: {where} has no key {key!r} (its keys: {sorted(record)[:8]})")
    return record[key]
