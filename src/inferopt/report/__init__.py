"""What a measurement looks like to its readers: the versioned JSON record (`schema`), rich
tables for the terminal (`console`) and a self-contained HTML page with plots (`html`)."""
