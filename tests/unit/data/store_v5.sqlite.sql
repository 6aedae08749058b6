-- A store at schema version 5 (before resources.io), as Fleet 2fcdadf made it: `sqlite3 fleet.db .dump`
-- of a new store with one tenant (acme, pids 64) and one plan (price_basic, memory 128Mi).
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE schema_migrations (
	version INTEGER NOT NULL, 
	description TEXT NOT NULL, 
	applied_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (version)
);
INSERT INTO schema_migrations VALUES(1,'tenants, status, templates, events, triggers','2026-11-30 20:34:35');
INSERT INTO schema_migrations VALUES(2,'api tokens, idempotency keys, webhook events, plans, signing keys','2026-11-30 20:34:35');
INSERT INTO schema_migrations VALUES(3,'nodes and leases (scheduler, heartbeats)','2026-11-30 20:34:35');
INSERT INTO schema_migrations VALUES(4,'tenant tombstones (deletions in the watch feed)','2026-11-30 20:34:35');
INSERT INTO schema_migrations VALUES(5,'memory limits in whole 4Ki pages','2026-11-30 20:34:35');
CREATE TABLE tenants (
	id INTEGER NOT NULL, 
	name TEXT NOT NULL, 
	labels TEXT DEFAULT '{}' NOT NULL, 
	template TEXT NOT NULL, 
	cpu_millicores BIGINT, 
	memory_bytes BIGINT, 
	disk_bytes BIGINT, 
	pids BIGINT, 
	ingress_ports TEXT, 
	paused BOOLEAN DEFAULT 0 NOT NULL, 
	node TEXT, 
	generation BIGINT DEFAULT '1' NOT NULL, 
	revision BIGINT DEFAULT '0' NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	updated_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	deletion_requested_at DATETIME, 
	finalized BOOLEAN DEFAULT 0 NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT name_must_be_1_to_63_characters CHECK (length(name) BETWEEN 1 AND 63), 
	CONSTRAINT cpu_millicores_must_be_between_10_and_256000 CHECK (cpu_millicores IS NULL OR (cpu_millicores BETWEEN 10 AND 256000)), 
	CONSTRAINT "memory_bytes_must_be_between_16Mi_and_1Ti" CHECK (memory_bytes IS NULL OR (memory_bytes BETWEEN 16777216 AND 1099511627776)), 
	CONSTRAINT "disk_bytes_must_be_between_16Mi_and_16Ti" CHECK (disk_bytes IS NULL OR (disk_bytes BETWEEN 16777216 AND 17592186044416)), 
	CONSTRAINT pids_must_be_between_8_and_4194304 CHECK (pids IS NULL OR (pids BETWEEN 8 AND 4194304)), 
	UNIQUE (name), 
	CONSTRAINT name_must_be_a_dns_label CHECK (name NOT GLOB '*[^a-z0-9-]*' AND name NOT GLOB '-*' AND name NOT GLOB '*-'), 
	CONSTRAINT template_must_be_a_dns_label CHECK (template NOT GLOB '*[^a-z0-9-]*' AND template NOT GLOB '-*' AND template NOT GLOB '*-'), 
	CONSTRAINT labels_must_be_a_json_object CHECK (json_valid(labels) AND json_type(labels) = 'object'), 
	CONSTRAINT ingress_ports_must_be_a_json_array CHECK (ingress_ports IS NULL OR (json_valid(ingress_ports) AND json_type(ingress_ports) = 'array' AND json_array_length(ingress_ports) <= 32)), 
	CONSTRAINT paused_must_be_0_or_1 CHECK (paused IN (0, 1))
);
INSERT INTO tenants VALUES(1,'acme','{}','base',NULL,NULL,NULL,64,NULL,0,NULL,1,1,'2026-11-30 20:34:35','2026-11-30 20:34:35',NULL,0);
CREATE TABLE tenant_status (
	name TEXT NOT NULL, 
	phase TEXT NOT NULL, 
	observed_generation BIGINT DEFAULT '0' NOT NULL, 
	node TEXT, 
	url TEXT, 
	address TEXT, 
	template TEXT, 
	conditions TEXT DEFAULT '[]' NOT NULL, 
	last_error TEXT, 
	observed TEXT, 
	revision BIGINT DEFAULT '0' NOT NULL, 
	updated_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (name)
);
CREATE TABLE templates (
	name TEXT NOT NULL, 
	version TEXT NOT NULL, 
	cpu_millicores BIGINT NOT NULL, 
	memory_bytes BIGINT NOT NULL, 
	disk_bytes BIGINT NOT NULL, 
	pids BIGINT NOT NULL, 
	ingress_ports TEXT DEFAULT '[80]' NOT NULL, 
	description TEXT DEFAULT '' NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (name), 
	CONSTRAINT cpu_millicores_must_be_between_10_and_256000 CHECK (cpu_millicores IS NULL OR (cpu_millicores BETWEEN 10 AND 256000)), 
	CONSTRAINT "memory_bytes_must_be_between_16Mi_and_1Ti" CHECK (memory_bytes IS NULL OR (memory_bytes BETWEEN 16777216 AND 1099511627776)), 
	CONSTRAINT "disk_bytes_must_be_between_16Mi_and_16Ti" CHECK (disk_bytes IS NULL OR (disk_bytes BETWEEN 16777216 AND 17592186044416)), 
	CONSTRAINT pids_must_be_between_8_and_4194304 CHECK (pids IS NULL OR (pids BETWEEN 8 AND 4194304)), 
	CONSTRAINT template_name_must_be_a_dns_label CHECK (name NOT GLOB '*[^a-z0-9-]*' AND name NOT GLOB '-*' AND name NOT GLOB '*-')
);
INSERT INTO templates VALUES('base','1',500,268435456,1073741824,256,'[80]','Built-in: a small Linux userland whose container serves HTTP on port 80','2026-11-30 20:34:35');
CREATE TABLE events (
	id INTEGER NOT NULL, 
	tenant TEXT NOT NULL, 
	node TEXT, 
	type TEXT DEFAULT 'Normal' NOT NULL, 
	reason TEXT NOT NULL, 
	action TEXT, 
	message TEXT DEFAULT '' NOT NULL, 
	duration_ms FLOAT, 
	generation BIGINT, 
	details TEXT DEFAULT '{}' NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE fleet_revision (
	id INTEGER NOT NULL, 
	value BIGINT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO fleet_revision VALUES(1,1);
CREATE TABLE api_tokens (
	name TEXT NOT NULL, 
	role TEXT NOT NULL, 
	token_hash TEXT NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	revoked_at DATETIME, 
	PRIMARY KEY (name), 
	CONSTRAINT role_must_be_billing_operator_or_viewer CHECK (role IN ('billing', 'operator', 'viewer')), 
	CONSTRAINT token_name_must_be_1_to_63_characters CHECK (length(name) BETWEEN 1 AND 63), 
	UNIQUE (token_hash), 
	CONSTRAINT token_name_must_be_a_dns_label CHECK (name NOT GLOB '*[^a-z0-9-]*' AND name NOT GLOB '-*' AND name NOT GLOB '*-')
);
CREATE TABLE idempotency_keys (
	principal TEXT NOT NULL, 
	"key" TEXT NOT NULL, 
	request_hash TEXT NOT NULL, 
	status_code INTEGER NOT NULL, 
	response_body TEXT NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (principal, "key")
);
CREATE TABLE webhook_events (
	event_id TEXT NOT NULL, 
	type TEXT NOT NULL, 
	tenant TEXT, 
	outcome TEXT NOT NULL, 
	received_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (event_id)
);
CREATE TABLE billing_subscriptions (
	subscription_id TEXT NOT NULL, 
	tenant TEXT NOT NULL, 
	customer TEXT, 
	"plan" TEXT, 
	last_event_created BIGINT DEFAULT '0' NOT NULL, 
	deleted_at DATETIME, 
	PRIMARY KEY (subscription_id)
);
CREATE TABLE plans (
	id TEXT NOT NULL, 
	template TEXT NOT NULL, 
	cpu_millicores BIGINT, 
	memory_bytes BIGINT, 
	disk_bytes BIGINT, 
	pids BIGINT, 
	ingress_ports TEXT, 
	description TEXT DEFAULT '' NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT cpu_millicores_must_be_between_10_and_256000 CHECK (cpu_millicores IS NULL OR (cpu_millicores BETWEEN 10 AND 256000)), 
	CONSTRAINT "memory_bytes_must_be_between_16Mi_and_1Ti" CHECK (memory_bytes IS NULL OR (memory_bytes BETWEEN 16777216 AND 1099511627776)), 
	CONSTRAINT "disk_bytes_must_be_between_16Mi_and_16Ti" CHECK (disk_bytes IS NULL OR (disk_bytes BETWEEN 16777216 AND 17592186044416)), 
	CONSTRAINT pids_must_be_between_8_and_4194304 CHECK (pids IS NULL OR (pids BETWEEN 8 AND 4194304)), 
	CONSTRAINT template_must_be_a_dns_label CHECK (template NOT GLOB '*[^a-z0-9-]*' AND template NOT GLOB '-*' AND template NOT GLOB '*-'), 
	CONSTRAINT plan_id_must_be_a_billing_id CHECK (id NOT GLOB '*[^A-Za-z0-9_.:-]*' AND length(id) BETWEEN 1 AND 128), 
	CONSTRAINT ingress_ports_must_be_a_json_array CHECK (ingress_ports IS NULL OR (json_valid(ingress_ports) AND json_type(ingress_ports) = 'array' AND json_array_length(ingress_ports) <= 32))
);
INSERT INTO plans VALUES('price_basic','base',NULL,134217728,NULL,NULL,NULL,'','2026-11-30 20:34:35');
CREATE TABLE signing_keys (
	kid TEXT NOT NULL, 
	secret TEXT NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	retired_at DATETIME, 
	revoked_at DATETIME, 
	PRIMARY KEY (kid)
);
CREATE TABLE nodes (
	name TEXT NOT NULL, 
	labels TEXT DEFAULT '{}' NOT NULL, 
	driver TEXT DEFAULT '' NOT NULL, 
	driver_info TEXT DEFAULT '{}' NOT NULL, 
	cpu_millicores BIGINT DEFAULT '0' NOT NULL, 
	memory_bytes BIGINT DEFAULT '0' NOT NULL, 
	disk_bytes BIGINT DEFAULT '0' NOT NULL, 
	max_tenants BIGINT DEFAULT '0' NOT NULL, 
	alloc_cpu_millicores BIGINT DEFAULT '0' NOT NULL, 
	alloc_memory_bytes BIGINT DEFAULT '0' NOT NULL, 
	alloc_disk_bytes BIGINT DEFAULT '0' NOT NULL, 
	alloc_tenants BIGINT DEFAULT '0' NOT NULL, 
	templates TEXT DEFAULT '[]' NOT NULL, 
	ksm_pages_shared BIGINT DEFAULT '0' NOT NULL, 
	ksm_pages_sharing BIGINT DEFAULT '0' NOT NULL, 
	cordoned BOOLEAN DEFAULT 0 NOT NULL, 
	ready BOOLEAN DEFAULT 0 NOT NULL, 
	not_ready_reason TEXT DEFAULT '' NOT NULL, 
	heartbeat_at FLOAT DEFAULT '0' NOT NULL, 
	registered_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (name), 
	CONSTRAINT node_name_must_be_1_to_63_characters CHECK (length(name) BETWEEN 1 AND 63), 
	CONSTRAINT alloc_tenants_must_not_be_negative CHECK (alloc_tenants >= 0)
);
CREATE TABLE leases (
	name TEXT NOT NULL, 
	holder TEXT NOT NULL, 
	renewed_at FLOAT NOT NULL, 
	expires_at FLOAT NOT NULL, 
	transitions INTEGER DEFAULT '0' NOT NULL, 
	PRIMARY KEY (name)
);
CREATE TABLE tenant_tombstones (
	name TEXT NOT NULL, 
	revision BIGINT DEFAULT '0' NOT NULL, 
	deleted_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (name)
);
CREATE INDEX ix_tenants_revision ON tenants (revision);
CREATE INDEX ix_tenant_status_revision ON tenant_status (revision);
CREATE INDEX ix_events_tenant ON events (tenant);
CREATE TRIGGER tenants_stamp_insert AFTER INSERT ON tenants BEGIN
         UPDATE fleet_revision SET value = value + 1 WHERE id = 1;
         UPDATE tenants SET revision = (SELECT value FROM fleet_revision WHERE id = 1), generation = 1
          WHERE id = NEW.id;
       END;
CREATE TRIGGER tenants_stamp_update AFTER UPDATE ON tenants
         WHEN NEW.revision IS OLD.revision BEGIN
         UPDATE fleet_revision SET value = value + 1 WHERE id = 1;
         UPDATE tenants SET revision = (SELECT value FROM fleet_revision WHERE id = 1),
                generation = OLD.generation + (CASE WHEN OLD.template IS NOT NEW.template OR OLD.cpu_millicores IS NOT NEW.cpu_millicores OR OLD.memory_bytes IS NOT NEW.memory_bytes OR OLD.disk_bytes IS NOT NEW.disk_bytes OR OLD.pids IS NOT NEW.pids OR OLD.ingress_ports IS NOT NEW.ingress_ports OR OLD.paused IS NOT NEW.paused THEN 1 ELSE 0 END),
                updated_at = CURRENT_TIMESTAMP
          WHERE id = NEW.id;
       END;
CREATE TRIGGER tenants_soft_delete BEFORE DELETE ON tenants WHEN NOT OLD.finalized BEGIN
         UPDATE tenants SET deletion_requested_at = COALESCE(OLD.deletion_requested_at, CURRENT_TIMESTAMP)
          WHERE id = OLD.id;
         SELECT RAISE(IGNORE);
       END;
CREATE TRIGGER tenants_delete_is_final BEFORE UPDATE ON tenants
         WHEN OLD.deletion_requested_at IS NOT NULL AND NEW.deletion_requested_at IS NULL BEGIN
         SELECT RAISE(ABORT, 'deletion_requested_at: a requested delete cannot be taken back');
       END;
CREATE TRIGGER tenants_no_spec_change_while_deleting BEFORE UPDATE ON tenants
         WHEN OLD.deletion_requested_at IS NOT NULL AND (OLD.template IS NOT NEW.template OR OLD.cpu_millicores IS NOT NEW.cpu_millicores OR OLD.memory_bytes IS NOT NEW.memory_bytes OR OLD.disk_bytes IS NOT NEW.disk_bytes OR OLD.pids IS NOT NEW.pids OR OLD.ingress_ports IS NOT NEW.ingress_ports OR OLD.paused IS NOT NEW.paused) BEGIN
         SELECT RAISE(ABORT, 'name: the tenant is being deleted; wait for the delete, then create it again');
       END;
CREATE TRIGGER tenants_template_known_insert BEFORE INSERT ON tenants
         WHEN NOT EXISTS (SELECT 1 FROM templates WHERE name = NEW.template) BEGIN
         SELECT RAISE(ABORT, 'template: unknown template; see fleet template list');
       END;
CREATE TRIGGER tenants_template_known_update BEFORE UPDATE OF template ON tenants
         WHEN NOT EXISTS (SELECT 1 FROM templates WHERE name = NEW.template) BEGIN
         SELECT RAISE(ABORT, 'template: unknown template; see fleet template list');
       END;
CREATE TRIGGER tenants_ports_insert BEFORE INSERT ON tenants WHEN NEW.ingress_ports IS NOT NULL AND json_valid(NEW.ingress_ports) AND EXISTS (SELECT 1 FROM json_each(NEW.ingress_ports) WHERE type != 'integer' OR value < 1 OR value > 65535) BEGIN
         SELECT RAISE(ABORT, 'ingress_ports: ports must be whole numbers from 1 to 65535');
       END;
CREATE TRIGGER tenants_ports_update BEFORE UPDATE OF ingress_ports ON tenants
         WHEN NEW.ingress_ports IS NOT NULL AND json_valid(NEW.ingress_ports) AND EXISTS (SELECT 1 FROM json_each(NEW.ingress_ports) WHERE type != 'integer' OR value < 1 OR value > 65535) BEGIN
         SELECT RAISE(ABORT, 'ingress_ports: ports must be whole numbers from 1 to 65535');
       END;
CREATE TRIGGER status_stamp_insert AFTER INSERT ON tenant_status BEGIN
         UPDATE fleet_revision SET value = value + 1 WHERE id = 1;
         UPDATE tenant_status SET revision = (SELECT value FROM fleet_revision WHERE id = 1)
          WHERE name = NEW.name;
       END;
CREATE TRIGGER status_stamp_update AFTER UPDATE ON tenant_status
         WHEN NEW.revision IS OLD.revision BEGIN
         UPDATE fleet_revision SET value = value + 1 WHERE id = 1;
         UPDATE tenant_status SET revision = (SELECT value FROM fleet_revision WHERE id = 1)
          WHERE name = NEW.name;
       END;
CREATE TRIGGER events_append_only BEFORE UPDATE ON events BEGIN
         SELECT RAISE(ABORT, 'events are append-only');
       END;
CREATE INDEX ix_billing_subscriptions_tenant ON billing_subscriptions (tenant);
CREATE INDEX ix_tenant_tombstones_revision ON tenant_tombstones (revision);
CREATE TRIGGER tombstones_stamp AFTER INSERT ON tenant_tombstones BEGIN
         UPDATE fleet_revision SET value = value + 1 WHERE id = 1;
         UPDATE tenant_tombstones SET revision = (SELECT value FROM fleet_revision WHERE id = 1)
          WHERE name = NEW.name;
       END;
CREATE TRIGGER tenants_memory_pages_insert BEFORE INSERT ON tenants WHEN NEW.memory_bytes % 4096 != 0 BEGIN SELECT RAISE(ABORT, 'memory_bytes: must be a whole number of 4Ki pages'); END;
CREATE TRIGGER tenants_memory_pages_update BEFORE UPDATE OF memory_bytes ON tenants WHEN NEW.memory_bytes % 4096 != 0 BEGIN SELECT RAISE(ABORT, 'memory_bytes: must be a whole number of 4Ki pages'); END;
CREATE TRIGGER templates_memory_pages_insert BEFORE INSERT ON templates WHEN NEW.memory_bytes % 4096 != 0 BEGIN SELECT RAISE(ABORT, 'memory_bytes: must be a whole number of 4Ki pages'); END;
CREATE TRIGGER templates_memory_pages_update BEFORE UPDATE OF memory_bytes ON templates WHEN NEW.memory_bytes % 4096 != 0 BEGIN SELECT RAISE(ABORT, 'memory_bytes: must be a whole number of 4Ki pages'); END;
COMMIT;
