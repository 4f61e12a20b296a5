"""Invalidation of the metadata cache when a schema changes, never on data writes.

Connected (when INVALIDATE_ON_MODEL_CHANGE):
  - post_migrate: every model's metadata (a migration may change any of them);
  - saves and deletes of ContentType and Permission: the model they name
    (permissions shape user-specific metadata); changes of a Group's
    permissions: all of it;
  - schema_changed (below): a project's own signal, sender = the model class.
Nothing listens to ordinary models' post_save: data writes keep the cache.
"""
from django.db.models.signals import m2m_changed, post_delete, post_migrate, post_save
from django.dispatch import Signal

schema_changed = Signal()
_connected = False


def _on(handler):
    from . import metadata

    def run(*args, **kwargs):
        if metadata.config()["ENABLED"] and metadata.config()["INVALIDATE_ON_MODEL_CHANGE"]:
            handler(*args, **kwargs)
    return run


def _all(**kwargs):
    from . import metadata
    metadata.invalidate_metadata_cache()


def _model_of_content_type(ct):
    from . import metadata
    try:
        model = ct.model_class()
    except Exception:
        model = None
    if model is not None:
        metadata.invalidate_metadata_cache(model._meta.object_name, model._meta.app_label)
    else:
        metadata.invalidate_metadata_cache()


def _content_type_changed(sender, instance, **kwargs):
    _model_of_content_type(instance)


def _permission_changed(sender, instance, **kwargs):
    _model_of_content_type(instance.content_type)


def _schema_changed(sender, **kwargs):
    from . import metadata
    metadata.invalidate_metadata_cache(sender._meta.object_name, sender._meta.app_label)


_handlers = {}


def connect():
    global _connected
    if _connected:
        return
    _connected = True
    from django.apps import apps

    h = _handlers
    h["migrate"] = _on(_all)
    post_migrate.connect(h["migrate"], dispatch_uid="hostcache.post_migrate", weak=False)
    h["schema"] = _on(_schema_changed)
    schema_changed.connect(h["schema"], dispatch_uid="hostcache.schema_changed", weak=False)
    if apps.is_installed("django.contrib.contenttypes"):
        from django.contrib.contenttypes.models import ContentType
        h["ct"] = _on(_content_type_changed)
        post_save.connect(h["ct"], sender=ContentType, dispatch_uid="hostcache.ct_save", weak=False)
        post_delete.connect(h["ct"], sender=ContentType, dispatch_uid="hostcache.ct_delete", weak=False)
    if apps.is_installed("django.contrib.auth"):
        from django.contrib.auth.models import Group, Permission
        h["perm"] = _on(_permission_changed)
        post_save.connect(h["perm"], sender=Permission, dispatch_uid="hostcache.perm_save", weak=False)
        post_delete.connect(h["perm"], sender=Permission, dispatch_uid="hostcache.perm_delete", weak=False)
        h["m2m"] = _on(lambda sender, action, **kw: _all() if action.startswith("post_") else None)
        # A group's permissions reshape every member's metadata; a user's own
        # group or permission changes are data writes and keep the cache.
        m2m_changed.connect(h["m2m"], sender=Group.permissions.through, weak=False,
                            dispatch_uid="hostcache.m2m.group_permissions")
