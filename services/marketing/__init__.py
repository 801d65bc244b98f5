"""Marketing: the tools a store applies to launch for itself. For now, brand-funded fixed-amount coupons that
an order redeems exactly once."""
