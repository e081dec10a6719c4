"""What every moeserve table shares, whichever package owns it: the constraint naming
convention and the column types (`columns`: UTC timestamps, exact decimals, JSON that reads
back as a pydantic model). A neutral package, so billing and the control plane both build
on it without importing each other; it imports none of moeserve's packages."""
