"""Unsaved model instances built without Model.__init__, for the send path's group commit.

`Model(**kwargs)` costs 50-60 µs for a Message or an Event (its loop over every field, the
kwargs checks, a descriptor call per related object): a send builds both, so that was a tenth
of the server's CPU at 1,000 sends/s. `InstanceBuilder(Model)(**kwargs)` makes the same
instance (the same attributes, defaults, related-object cache and `_state`) in a few µs, and
`.from_db(db, row)` what `Model.from_db` makes of a row of every column (12-15 µs each for the
room, membership and user rows a batch reads under its locks).

Django's private parts used here: `ModelState` and the instance layout `Model.__init__` leaves
(attribute values by `attname`, related objects in `_state.fields_cache` by field name). This
is their one user; tests/core/test_instances.py compares the result with `Model(**kwargs)` on
the installed Django and fails when an upgrade changes either. A model with `pre_init` or
`post_init` receivers, or a keyword this builder does not know, goes through `Model(**kwargs)`.
"""

from __future__ import annotations

from django.db import models, router
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init

_CONSTANT = (type(None), bool, int, float, str)


class InstanceBuilder:
    """Builds unsaved instances of one model, as `model(**kwargs)` would."""

    def __init__(self, model: type[models.Model]):
        self.model = model
        fields = model._meta.concrete_fields
        self.columns = [f.attname for f in fields]
        # Forward foreign keys given as objects: name -> (attname, the target's attname, the
        # target's model).
        self.related = {
            f.name: (f.attname, f.target_field.attname, f.remote_field.model._meta.concrete_model)
            for f in fields
            if isinstance(f, models.ForeignKey) and not f.one_to_one
        }
        # Defaults in field order: (attname, name, constant, or the field's get_default to call).
        self.defaults = []
        for field in fields:
            if field.has_default() and callable(field.default):
                self.defaults.append((field.attname, field.name, None, field.get_default))
                continue
            value = field.get_default()
            if isinstance(value, _CONSTANT):
                self.defaults.append((field.attname, field.name, value, None))
            else:  # a db_default expression, a mutable default: a new one each time
                self.defaults.append((field.attname, field.name, None, field.get_default))
        self.keywords = frozenset(self.columns) | self.related.keys()
        self.fast = not any(field.is_relation and field.one_to_one for field in fields)

    def plain(self) -> bool:
        """Whether Model.__init__ does nothing here beyond what this builder does."""
        if not (pre_init.receivers or post_init.receivers):  # none at all: the common case
            return self.fast
        model = self.model
        return self.fast and not (pre_init.has_listeners(model) or post_init.has_listeners(model))

    def __call__(self, **kwargs) -> models.Model:
        model = self.model
        if not self.plain() or not kwargs.keys() <= self.keywords:
            return model(**kwargs)
        related = self.related
        for name, value in kwargs.items():
            link = related.get(name)
            if link is not None and value is not None and not isinstance(value, link[2]):
                return model(**kwargs)  # Django's error for an object of the wrong model
        instance = model.__new__(model)
        state = instance._state = ModelState()
        values = instance.__dict__
        for attname, name, constant, default in self.defaults:
            if attname in kwargs or name in kwargs:
                continue
            values[attname] = constant if default is None else default()
        for name, value in kwargs.items():
            link = related.get(name)
            if link is None:
                values[name] = value
                continue
            state.fields_cache[name] = value
            if value is None:
                values[link[0]] = None
                continue
            values[link[0]] = getattr(value, link[1])
            # As ForwardManyToOneDescriptor.__set__ (its allow_relation check aside: one
            # database): the instance goes where the related object is, and back.
            if state.db is None:
                state.db = router.db_for_write(model, instance=value)
            if value._state.db is None:
                value._state.db = router.db_for_write(value.__class__, instance=instance)
        return instance

    def from_db(self, db: str, values, **related) -> models.Model:
        """What `model.from_db(db, None, values)` makes from a row of every concrete column in
        field order, with `related` (by field name: the objects read with it, their ids the
        row's) set as an assignment would set them."""
        model = self.model
        if len(values) != len(self.columns):
            raise ValueError(f"a {model.__name__} row has {len(self.columns)} columns")
        if not self.plain() or not related.keys() <= self.related.keys():
            instance = model.from_db(db, None, values)
            for name, value in related.items():
                setattr(instance, name, value)
            return instance
        instance = model.__new__(model)
        state = instance._state = ModelState()
        state.adding = False
        state.db = db
        instance.__dict__.update(zip(self.columns, values, strict=True))
        for name, value in related.items():
            state.fields_cache[name] = value
        return instance
