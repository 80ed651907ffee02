-- Room types on the channels' side (docs/api.md "Room types"): snapshots and
-- checksums carry claims on room types with the units they hold, so the iCal
-- export, an adapter on the channel kit, keeps them too: its checksum over
-- its own ranges must match, and a room type's feed is drawn from them. NULL
-- on claims on the single unit. Ranges of room types the export skipped
-- before are brought back by the first checksum that finds them missing (the
-- kit asks for a resync).
ALTER TABLE ical_export_ranges ADD COLUMN room_type_id uuid;
ALTER TABLE ical_export_ranges ADD COLUMN units integer CHECK (units >= 1);
