"""plex.tv: link an account (PIN flow) and keep one plex.tv device per face, for apps that list plex.tv players."""
