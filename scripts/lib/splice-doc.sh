# Sourced by the scripts that record a measured table in a document:
#   splice_table DOC MARKER CAPTION TABLE_FILE
# replaces what stands between `<!-- MARKER:start -->` and
# `<!-- MARKER:end -->` in DOC with CAPTION (a line saying when, at which
# commit and by which command) and the table.
splice_table() {
    local doc=$1 marker=$2 caption=$3 table=$4
    local start="<!-- $marker:start -->" end="<!-- $marker:end -->"
    grep -q "$start" "$doc" || { echo "$doc has no '$start' marker" >&2; return 1; }
    {
        sed "/$start/q" "$doc"
        echo
        echo "$caption"
        echo
        cat "$table"
        echo
        sed -n "/$end/,\$p" "$doc"
    } > "$doc.new"
    mv "$doc.new" "$doc"
    echo "$marker written to $doc"
}
