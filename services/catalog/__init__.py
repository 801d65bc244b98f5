"""Catalog: the brand's central product library, dealers, stores and what each store lists."""
