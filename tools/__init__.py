"""Developer tools run from the Makefile, beside the product: the services and the edge never import them."""
