"""Wikipedia dumps: where they are (sources), downloading them (checksums, an HTTP retry policy), and
reading their pages (bz2 multistream ranges, a Ray Data datasource)."""
