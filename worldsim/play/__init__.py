"""Playing worlds live with the keyboard, and recording what is played."""
