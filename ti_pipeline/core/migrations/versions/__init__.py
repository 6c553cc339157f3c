"""The revisions, oldest first by id; a package only so the wheel ships them."""
