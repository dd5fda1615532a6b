"""The tracker core: users, projects, trackers, artifacts, changesets and the services changing them."""
