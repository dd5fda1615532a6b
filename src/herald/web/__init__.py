"""The HTTP face of herald: JSON API, admin pages, mailbox view, metrics and health."""

from herald.web.app import create_app

__all__ = ["create_app"]
