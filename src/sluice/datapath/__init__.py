"""Python mirrors of the datapath's map layouts, one module per C header."""
