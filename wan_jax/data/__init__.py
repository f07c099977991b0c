"""Reading the user's folders of images, clips, masks and captions into training items."""
