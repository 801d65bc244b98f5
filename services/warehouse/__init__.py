"""Warehouse: the brand's cloud warehouses, their stock, reservations for unpaid orders and shipments for
paid ones."""
