"""Starting, stopping and polling user servers as their own Unix accounts."""
