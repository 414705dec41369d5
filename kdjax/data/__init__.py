"""Host-side data: corpus loading, tokenization, packing, MLM masking and batching (numpy only)."""
