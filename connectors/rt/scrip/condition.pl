# Switchboard: the scrip's "Custom condition" (Condition: User Defined).
# Fires for the transactions a ticket's room shows: creation, replies, comments, status,
# owner and watcher changes, merges, and the fields a source may select tickets by (priority,
# custom fields).
my $type = $self->TransactionObj->Type;
return 1 if $type =~ /^(?:Create|Correspond|Comment|Status|Give|Take|Steal|Untake|Force|AddWatcher|DelWatcher|AddLink|DeleteLink|CustomField)$/;
return 1 if $type eq 'Set' && ($self->TransactionObj->Field // '') =~ /^(?:Owner|Subject|Queue|Priority)$/;
return 0;
