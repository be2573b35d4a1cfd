COMMENT ON FUNCTION integrity.tg_default() IS
'Trigger function, BEFORE INSERT (or UPDATE) FOR EACH ROW: tg_default(col, value [, col, value ...]) sets each NULL col to its value, converted with the column''s type.';
COMMENT ON FUNCTION integrity.tg_link_status() IS
'Trigger function, BEFORE INSERT OR UPDATE FOR EACH ROW: tg_link_status(fk_col, status_col, linked_value, unlinked_value) keeps status_col at linked_value while fk_col is set, unlinked_value while it is NULL.';
COMMENT ON FUNCTION integrity.tg_implies() IS
'Trigger function, BEFORE INSERT OR UPDATE FOR EACH ROW: tg_implies(if_col, if_value, then_col, then_value [, ''correct'' | ''reject'']) makes then_col = then_value whenever if_col = if_value, or refuses the row (23514).';
COMMENT ON FUNCTION integrity.tg_child_flag() IS
'Trigger function, AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW on a child table: tg_child_flag(parent_table, parent_key, child_fk, flag_col [, count_col [, deleted_col]]) keeps the parent''s flag (and count) equal to whether (how many) live child rows point at it.';

CREATE FUNCTION integrity.attach_child_flag(child regclass, parent_table text, parent_key text,
                                            child_fk text, flag_col text,
                                            count_col text DEFAULT '', deleted_col text DEFAULT '')
RETURNS text[] LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT integrity.attach_child_flag_by_oid(child::oid, parent_table, parent_key, child_fk,
                                                flag_col, count_col, deleted_col) $$;
COMMENT ON FUNCTION integrity.attach_child_flag(regclass, text, text, text, text, text, text) IS
'Attach tg_child_flag''s set-based form to a child table: three AFTER INSERT / UPDATE / DELETE FOR EACH STATEMENT triggers with transition tables, so a bulk statement recounts each touched parent once. Returns the trigger names.';
COMMENT ON FUNCTION integrity.attach_child_flag_by_oid(oid, text, text, text, text, text, text) IS
'integrity.attach_child_flag with the child table given by OID.';
