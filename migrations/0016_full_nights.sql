-- The availability search for one unit (docs/api.md "Room types") leaves out
-- the room types that have a full night in the window. Most nights of a room
-- type are not full, so it reads the full nights alone from this index
-- instead of every night of the agency's room types in the window and
-- filtering them (P7 with 2,000 hotels of 5 room types: 18.5 ms -> 2.1 ms for
-- that part of the query, docs/benchmarks.md). A replay copies the index with
-- the table (it copies every index definition, predicate included).
CREATE INDEX inventory_nights_full ON inventory_nights (agency_id, night)
    INCLUDE (room_type_id) WHERE taken >= units;
