"""The sample project `herald up --demo` seeds: enough to see every kind of recipient and permission."""

from __future__ import annotations

from typing import Any

DEMO_PROJECT = "demo"

DEMO: dict[str, Any] = {
    "users": [
        {"username": "alice", "email": "alice@example.org", "real_name": "Alice Martin", "language": "en"},
        {
            "username": "bob",
            "email": "bob@example.org",
            "real_name": "Bob Durand",
            "language": "fr",
            "timezone": "Europe/Paris",
        },
        {
            "username": "carol",
            "email": "carol@example.org",
            "real_name": "Carol Chen",
            "timezone": "America/New_York",
            "mail_format": "text",
        },
        {"username": "dave", "email": "dave@example.org", "real_name": "Dave Outsider"},
    ],
    "projects": [
        {
            "name": DEMO_PROJECT,
            "label": "Demo project",
            "public": True,
            "members": ["alice", "bob", "carol"],
            "admins": ["alice"],
        },
    ],
    "trackers": [
        {
            "project": DEMO_PROJECT,
            "name": "bugs",
            "item_name": "bug",
            "fields": [
                {"name": "title", "type": "string", "required": True},
                {"name": "status", "type": "select", "options": ["New", "In progress", "Fixed", "Closed"]},
                {"name": "assigned_to", "type": "user", "notify": True, "label": "Assigned to"},
                {"name": "cc", "type": "users", "notify": True, "label": "CC"},
                {"name": "severity", "type": "select", "options": ["Minor", "Major", "Critical"]},
                {"name": "description", "type": "text"},
                {"name": "internal_notes", "type": "text", "read_permission": "members"},
            ],
            "semantics": {
                "title": "title",
                "status": "status",
                "open_values": ["New", "In progress"],
                "assigned_to": "assigned_to",
            },
            "notifications": {
                "mode": "all_updates",
                "lists": [{"addresses": ["qa-team@example.org"], "on_updates": False}],
            },
        }
    ],
    "artifacts": [
        {
            "tracker": "demo/bugs",
            "author": "alice",
            "values": {
                "title": "Saving a draft loses the attachments",
                "status": "New",
                "assigned_to": "bob",
                "cc": ["carol"],
                "severity": "Major",
                "description": "Steps: attach a file, save as draft, reopen: the file is gone.",
            },
            "comment": "@carol can you reproduce on staging?",
        },
    ],
}
