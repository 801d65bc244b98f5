"""Settlement: the split of every paid order between the brand (cost) and the dealer (profit), kept in a
double-entry ledger in fen."""
