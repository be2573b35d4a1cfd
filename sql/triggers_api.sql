COMMENT ON FUNCTION integrity.tg_default() IS
'Trigger function, BEFORE INSERT (or UPDATE) FOR EACH ROW: tg_default(col, value [, col, value ...]) sets each NULL col to its value, converted with the column''s type.';
COMMENT ON FUNCTION integrity.tg_link_status() IS
'Trigger function, BEFORE INSERT OR UPDATE FOR EACH ROW: tg_link_status(fk_col, status_col, linked_value, unlinked_value) keeps status_col at linked_value while fk_col is set, unlinked_value while it is NULL.';
COMMENT ON FUNCTION integrity.tg_implies() IS
'Trigger function, BEFORE INSERT OR UPDATE FOR EACH ROW: tg_implies(if_col, if_value, then_col, then_value [, ''correct'' | ''reject'']) makes then_col = then_value whenever if_col = if_value, or refuses the row (23514).';
COMMENT ON FUNCTION integrity.tg_child_flag() IS
'Trigger function, AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW on a child table: tg_child_flag(parent_table, parent_key, child_fk, flag_col [, count_col [, deleted_col]]) keeps the parent''s flag (and count) equal to whether (how many) live child rows point at it.';
