"""Bridges to other systems, each an optional extra: `ray` (edgeqwen[ray]) runs batches on a Ray cluster."""
